"""The threshold-sharing study (``qkdseg study --threshold``, ``make threshold-study``; issue 40).

XOR against k-of-m threshold sharing (``tolerate`` T = 1 and 2, docs/model.md
section 4a) on the paper's setting (100-node Waxman networks, docs/model.md
section 7) and on two Internet Topology Zoo networks (:data:`ZOO`), with
node-disjoint multipath (``disjoint``) and MSP as the baselines. Schemes
(:data:`SCHEMES`): SMR's route with XOR and the paper's reconstruction (the
paper's scheme), the same route with XOR and one key of every piece
(``xor-all``: the key threshold sharing makes, with XOR), the same route
shared 2-of-... with T = 1 and T = 2, and ``disjoint`` and ``msp`` with XOR
and the paper's reconstruction; beside them ``smr-exact`` with T = 1 and 2,
whose segment nodes are chosen for the sharing (the chain whose full route
has the highest k-of-m security, a chain with a segment of ``m <= T`` paths
last); and ``smr-level`` with T = 1, whose paths are the fewest hops that
meet the level with 2-of-... sharing (docs/algorithms.md): in the static part
it routes to :data:`COST_EPSILON` (its other key columns are NaN, its
security is that of a route that only just meets the level), in the
simulator to each request's level.

**Static part** (one row per network point, request and scheme): the route's
exact security under its sharing (0 when the route is blocked or has a
segment of ``m <= T`` paths: ``refused``), its consumed link bits, and the
key bits it delivers at each level of :data:`EPSILONS` (``paper``: its keys;
``xor-all`` and threshold: one ``B``-bit key when the route's security meets
the level). Key consumption per key bit at a level is ``sum(consumed bits) /
sum(key bits)`` over the requests that get a key there. Points: on Waxman
networks the paper's Fig. 5 and Fig. 6 grids (p at 10 trusted relays, the
trusted count at p = 0.8; a few of their points unless ``full``), trial
``i`` drawn exactly as ``qkdseg reproduce`` draws it (``trial_seed(seed,
i)``: topology, trusted placement, pair); on each Zoo network the same two
sweeps with :data:`ZOO_TRUSTED` and ``p`` at 5 trusted relays, request ``i``
with its own placement seed ``trial_seed(seed, i)`` and pair (the largest
connected component). SMR's paths are routed once per request and point and
then evaluated under each sharing (``route_indices(..., routed=)``): the
schemes differ only in how the pieces make the key.

**Dynamic part** (the time-dynamic simulator, docs/model.md section 9): on
one network per setting (Waxman: seed ``seed``, 10 trusted relays; Zoo: 5
trusted relays placed by ``seed``; untrusted relays at p = 0.8), Poisson
requests between uniform pairs, replication ``r`` on the trace of seed
``trial_seed(seed, r)``, each scheme at every relay failure probability of
:data:`FAILURES`. Failures are drawn from each request's recorded seed
(:mod:`qkdseg.sim.failures`): at one replication every scheme and every
probability sees the same uniform draws (a relay down at 1% is down at 5%),
so the differences between schemes are paired.
"""

from __future__ import annotations

import os
from typing import Any

import networkx as nx
import numpy as np

from ..api import route_indices
from ..errors import InvalidRequest
from ..reconstruction import paper_key_counts
from ..reconstruction.result import meets
from ..sim import Simulation, poisson_requests
from ..topology import load_topohub, waxman
from .runner import process_pool
from .spec import eps_column, paper_spec, trial_seed
from .trials import TrialTopology, request_pair

#: ``(label, algorithm, tolerate, reconstruction)``; the first is the reference of the paired differences.
SCHEMES = (
    ("smr xor", "smr", 0, "paper"),
    ("smr xor-all", "smr", 0, "xor-all"),
    ("smr T=1", "smr", 1, "xor-all"),
    ("smr T=2", "smr", 2, "xor-all"),
    ("smr-exact T=1", "smr-exact", 1, "xor-all"),
    ("smr-exact T=2", "smr-exact", 2, "xor-all"),
    ("smr-level T=1", "smr-level", 1, "xor-all"),
    ("disjoint xor", "disjoint", 0, "paper"),
    ("msp xor", "msp", 0, "paper"),
)
#: The two Internet Topology Zoo networks (topohub keys): DFN (51 nodes, 80 links) and UUNET (42 nodes, 77 links).
ZOO = ("topozoo/Dfn", "topozoo/Uunet")
#: Security levels of the key columns; the cost per key bit is reported at :data:`COST_EPSILON`.
EPSILONS = (0.5, 0.7, 0.9)
COST_EPSILON = 0.7
#: Relay failure probabilities of the dynamic part.
FAILURES = (0.0, 0.01, 0.05)
#: Trusted counts and p of the Zoo sweeps (p swept at :data:`ZOO_BASE_TRUSTED` trusted relays, the counts at p 0.8).
ZOO_TRUSTED = (0, 2, 5, 10)
ZOO_P = (0.6, 0.7, 0.8, 0.9)
ZOO_BASE_TRUSTED = 5
#: The quick grid's Waxman points (a subset of the paper's).
QUICK_WAXMAN_P = (0.6, 0.7, 0.8, 0.9)
QUICK_WAXMAN_TRUSTED = (0, 5, 10, 20, 30)


def waxman_points(full: bool) -> list[tuple[str, float, int]]:
    """``(sweep, p, trusted)`` of the Waxman setting: the paper's Fig. 5/6 grids, or their quick subset."""
    spec = paper_spec(trials=1)
    out = []
    for fig, sweep in zip(spec.figures, ("p", "trusted")):
        for p, t in fig.points:
            if full or (p in QUICK_WAXMAN_P if sweep == "p" else t in QUICK_WAXMAN_TRUSTED):
                out.append((sweep, p, t))
    return out


def zoo_points() -> list[tuple[str, float, int]]:
    return [("p", p, ZOO_BASE_TRUSTED) for p in ZOO_P] + [("trusted", 0.8, t) for t in ZOO_TRUSTED]


def _scheme_rows(arrays, s: int, d: int, seed: int) -> list[dict[str, Any]]:
    """Every scheme of :data:`SCHEMES` on one request: the static columns."""
    rows = []
    routed: dict[str, tuple] = {}
    for label, alg, t, rec in SCHEMES:
        opts = {"seed": seed} if alg == "msp" else {"epsilon": COST_EPSILON} if alg == "smr-level" else {}
        refused = False
        try:
            r = route_indices(arrays, s, d, alg, routed=routed.get(alg), tolerate=t, **opts)
        except InvalidRequest:  # a segment of m <= T paths: refused
            r, refused = None, True
        if r is not None and alg not in routed and not r.blocked and not t:
            routed[alg] = ([arrays.index[v] for v in r.segment_nodes], [[list(p) for p in seg] for seg in r.index_paths])
        ok = r is not None and not r.blocked
        row = {"scheme": label, "algorithm": alg, "tolerate": t, "refused": refused,
               "blocked": r is None or r.blocked, "security": r.security if ok else 0.0,
               "consumed_bits": r.consumed_bits if ok else 0, "paths": sum(len(x) for x in r.index_paths) if ok else 0,
               "segments": len(r.segments) if ok else 0}
        if not ok:
            bits = [0] * len(EPSILONS)
        elif rec == "paper":
            segs = [[list(p) for p in seg] for seg in r.index_paths]
            chain = [arrays.index[v] for v in r.segment_nodes[1:-1]]
            bits = [c * r.block_bits for c in paper_key_counts(arrays.p, segs, chain, EPSILONS)]
        else:
            bits = [r.block_bits if meets(r.security, e) else 0 for e in EPSILONS]
        for e, b in zip(EPSILONS, bits):
            row[eps_column(e)] = int(b) if alg != "smr-level" or e == COST_EPSILON else float("nan")
        rows.append(row)
    return rows


def static_waxman(seed: int, trials: list[int], points: list) -> list[dict[str, Any]]:
    """Rows of Waxman trials ``trials`` at every point (a task)."""
    spec = paper_spec(trials=1)
    rows = []
    for i in trials:
        ts = trial_seed(seed, i)
        topo = TrialTopology(spec, ts)
        s, d = request_pair(ts, spec.nodes)
        for sweep, p, t in points:
            base = {"network": "waxman-100", "sweep": sweep, "p_untrusted": p, "n_trusted": t, "request": i,
                    "seed": ts}
            rows += [{**base, **row} for row in _scheme_rows(topo.arrays(p, t), s, d, ts)]
    return rows


def static_zoo(key: str, seed: int, requests: list[int], points: list) -> list[dict[str, Any]]:
    """Rows of a Zoo network's requests ``requests`` at every point (a task)."""
    rows = []
    for i in requests:
        ts = trial_seed(seed, i)
        for sweep, p, t in points:
            net = load_topohub(key, trusted=t, p=p, seed=ts)
            a = net.arrays
            comp = max(nx.connected_components(net.graph), key=lambda c: (len(c), -min(a.index[v] for v in c)))
            members = np.array(sorted(a.index[v] for v in comp))
            s, d = (int(x) for x in np.random.default_rng([ts, 2]).choice(members, size=2, replace=False))
            base = {"network": key.split("/")[-1], "sweep": sweep, "p_untrusted": p, "n_trusted": t, "request": i,
                    "seed": ts}
            rows += [{**base, **row} for row in _scheme_rows(a, s, d, ts)]
    return rows


def dynamic_runs(name: str, seed: int, rep: int, sim: dict) -> list[dict[str, Any]]:
    """Every scheme at every failure probability on replication ``rep``'s trace of one network (a task)."""
    net = _sim_network(name, seed)
    ts = trial_seed(seed, rep)
    req = poisson_requests(net, sim["rate"], sim["duration"], seed=ts, key_bits=sim["key_bits"],
                           epsilon=sim["epsilon"])
    rows = []
    for label, alg, t, rec in SCHEMES:
        for prob in FAILURES:
            run = Simulation(net, req, alg, reconstruction=rec, sharing="threshold" if t else "xor", tolerate=t,
                             relay_failure=prob, interval=sim["duration"]).run()
            d = run.requests_frame()
            served = d[d["served"]]
            rows.append({"network": name.split("/")[-1], "replication": rep, "seed": ts, "scheme": label,
                         "relay_failure": prob, "requests": len(d), "served": len(served),
                         "served_share": len(served) / len(d) if len(d) else float("nan"),
                         "failed": int((d["reason"] == "failed").sum()),
                         "epsilon_unmet": int((d["reason"] == "epsilon").sum()),
                         "few_paths": int((d["reason"] == "few_paths").sum()),
                         "short": int((d["reason"] == "short").sum()),
                         "served_key_bits": int(served["key_bits"].sum()),
                         "consumed_link_bits": int(run.levels.consumed.sum()),
                         "mean_security": float(served["security"].mean()) if len(served) else float("nan")})
    return rows


def _sim_network(name: str, seed: int):
    if name == "waxman-100":
        return waxman(100, trusted=10, p=0.8, seed=seed)
    return load_topohub(name, trusted=ZOO_BASE_TRUSTED, p=0.8, seed=seed)


def run_threshold_study(*, requests: int = 20, replications: int = 3, seed: int = 0, full: bool = False,
                        sim: dict | None = None, workers: int | None = None, progress: bool = True):
    """``(static rows, dynamic rows)`` as DataFrames (module docstring), computed on ``workers`` processes."""
    import pandas as pd
    from tqdm.auto import tqdm

    if requests < 2 or replications < 2:
        raise InvalidRequest(f"requests={requests} and replications={replications} must be at least 2 (95% CIs)")
    sim = {"rate": 10.0, "duration": 60.0, "key_bits": 256, "epsilon": 0.5, **(sim or {})}
    wpts, zpts = waxman_points(full), zoo_points()
    blocks = [list(range(k, min(k + 5, requests))) for k in range(0, requests, 5)]
    tasks = [(static_waxman, (seed, b, wpts)) for b in blocks]
    tasks += [(static_zoo, (key, seed, b, zpts)) for key in ZOO for b in blocks]
    tasks += [(dynamic_runs, (name, seed, r, sim)) for name in ("waxman-100", *ZOO) for r in range(replications)]
    workers = workers or os.cpu_count() or 1
    results: list[list[dict]] = [[] for _ in tasks]
    with tqdm(total=len(tasks), desc="threshold study", unit="task", disable=not progress) as bar:
        if workers == 1:
            for i, (func, args) in enumerate(tasks):
                results[i] = func(*args)
                bar.update(1)
        else:
            with process_pool(workers) as pool:
                futs = [pool.submit(func, *args) for func, args in tasks]
                for i, fut in enumerate(futs):
                    results[i] = fut.result()
                    bar.update(1)
    static = [row for func_rows, (func, _) in zip(results, tasks) if func is not dynamic_runs for row in func_rows]
    dynamic = [row for func_rows, (func, _) in zip(results, tasks) if func is dynamic_runs for row in func_rows]
    return pd.DataFrame(static), pd.DataFrame(dynamic), sim
