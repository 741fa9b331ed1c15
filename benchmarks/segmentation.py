"""``python -m benchmarks.segmentation [--quick] [--out benchmarks/segmentation.md]``.

What segmenting buys, and what it costs, for ``smr`` (the paper's), ``smr``
with ``verify=True``, ``smr-exact`` and ``disjoint`` (no segments):

1. **Time per request**, interleaved request by request in one process
   (median ms, and the ratio to ``smr``'s median on the same pairs): the
   benchmark network of ``python -m benchmarks`` (``waxman(100, trusted=10,
   p=0.8, seed=1)``) and a 1,000-node ``waxman_large(1000, trusted=100,
   p=0.8, seed=1)``.
2. **Quality** on the same requests for every algorithm: mean exact
   security, consumed bits and key length (``paper`` reconstruction at 0.5
   and 0.9), the share of requests below ``disjoint`` and the mean gain over
   it, in two settings:
   - the paper's: 100-node Waxman, 10 trusted relays, p = 0.8, the trials of
     ``qkdseg reproduce --seed 0`` (the point fig6 T=10: the same rows as
     ``out/results.parquet``);
   - ``waxman_large(1000, trusted=100, p=0.8, seed=k)`` for k = 0..9, 20
     seeded requests each.
   Beside them: ``smr-exact`` with other candidate caps and with the
   ``keys`` objective, and the best route with at most one segment node
   (every trusted relay tried).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from qkdseg.api import route_indices
from qkdseg.experiments import paper_spec, trial_seed
from qkdseg.experiments.trials import TrialTopology, request_pair
from qkdseg.reconstruction import paper_key_counts
from qkdseg.routing import get_algorithm
from qkdseg.routing.smr import request_masks
from qkdseg.routing.smr_exact import _beats, _Evaluator, candidate_relays
from qkdseg.topology import waxman, waxman_large

from .__main__ import machine

#: (label, registry name, options) of the timed algorithms; smr first (the ratio's base).
TIMED = [
    ("smr", "smr", {}),
    ("smr verify=True", "smr", {"verify": True}),
    ("smr-exact", "smr-exact", {}),
    ("disjoint", "disjoint", {}),
]
#: The quality rows: the timed ones and smr-exact at other caps.
QUALITY = TIMED + [
    ("smr-exact candidates=4", "smr-exact", {"candidates": 4}),
    ("smr-exact candidates=16", "smr-exact", {"candidates": 16}),
    ("smr-exact candidates=32", "smr-exact", {"candidates": 32}),
    ("smr-exact objective=keys at 0.5", "smr-exact", {"objective": "keys", "keys_epsilon": 0.5}),
    ("smr-exact objective=keys at 0.9", "smr-exact", {"objective": "keys", "keys_epsilon": 0.9}),
]


def best_single(arrays, s: int, d: int):
    """The best route with at most one segment node: every trusted relay
    tried (``(segment_nodes, paths)``)."""
    from qkdseg.routing.smr import round_robin_paths

    rn, rl = request_masks(arrays, s, d, arrays.pool_bits <= 0)
    ev = _Evaluator(arrays, s, d, rn, rl, None, "security", 0.9, "numba")
    best_chain, best = (), ev(())
    for r in candidate_relays(arrays, s, d, rn, "numba", None)[0]:
        if _beats(ev((r,)), best):
            best_chain, best = (r,), ev((r,))
    nodes = [s, *best_chain, d]
    return nodes, round_robin_paths(arrays, nodes, removed_nodes=rn, removed_links=rl)


def timing(arrays, pairs, budget: float) -> list[dict]:
    funcs = [(label, get_algorithm(name).func, opts) for label, name, opts in TIMED]
    removed = arrays.pool_bits <= 0
    for _, f, o in funcs:  # warm-up (numba cache load)
        f(arrays, *pairs[0], removed_links=removed, **o)
    times: dict[str, list[float]] = {label: [] for label, _, _ in funcs}
    start = time.perf_counter()
    for i, (s, d) in enumerate(pairs):
        k = i % len(funcs)  # rotate which algorithm runs first on a request (cold caches)
        for label, f, o in funcs[k:] + funcs[:k]:
            t = time.perf_counter()
            f(arrays, s, d, removed_links=removed, **o)
            times[label].append(time.perf_counter() - t)
        if time.perf_counter() - start > budget and len(times["smr"]) >= 5:
            break
    base = statistics.median(times["smr"])
    return [dict(what=label, median_ms=1e3 * statistics.median(t), ratio=statistics.median(t) / base, requests=len(t))
            for label, t in times.items()]


def quality(requests, extra_best_single: bool = True) -> list[dict]:
    """``requests``: (arrays, s, d) triples. Per algorithm: means over them."""
    rows = {label: [] for label, _, _ in QUALITY}
    if extra_best_single:
        rows["best single segment node"] = []
    secs: dict[str, float] = {label: 0.0 for label in rows}
    for arrays, s, d in requests:
        removed = arrays.pool_bits <= 0
        todo = [(label, name, opts) for label, name, opts in QUALITY]
        if extra_best_single:
            todo.append(("best single segment node", "smr-exact", None))
        for label, name, opts in todo:
            t = time.perf_counter()
            if opts is None:
                routed = best_single(arrays, s, d)
            else:
                routed = get_algorithm(name).func(arrays, s, d, removed_links=removed, **opts)
            secs[label] += time.perf_counter() - t
            r = route_indices(arrays, s, d, name, routed=routed)
            segs = [[list(p) for p in seg] for seg in r.index_paths]
            chain = list(routed[0][1:-1])
            keys = [0, 0] if r.blocked else [c * r.block_bits for c in paper_key_counts(arrays.p, segs, chain, (0.5, 0.9))]
            rows[label].append((r.security, r.consumed_bits, keys[0], keys[1], len(routed[0]) - 2))
    dis = np.array([x[0] for x in rows["disjoint"]])
    out = []
    for label, vals in rows.items():
        a = np.array(vals, dtype=float)
        sec = a[:, 0]
        out.append(dict(what=label, n=len(a), security=sec.mean(), consumed_mb=a[:, 1].mean() / 1e6,
                        kb50=a[:, 2].mean() / 1e3, kb90=a[:, 3].mean() / 1e3, segment_nodes=a[:, 4].mean(),
                        below=float((sec < dis - 1e-12).mean()), gain=float((sec - dis).mean()),
                        worst=float(max(0.0, (dis - sec).max())), ms=1e3 * secs[label] / len(a)))
    return out


def paper_requests(trials: int):
    spec = paper_spec(trials=trials, seed=0)
    for t in range(trials):
        seed = trial_seed(0, t)
        s, d = request_pair(seed, spec.nodes)
        yield TrialTopology(spec, seed).arrays(0.8, 10), s, d


def large_requests(networks: int, per_network: int):
    for k in range(networks):
        arrays = waxman_large(1000, trusted=100, p=0.8, seed=k).arrays
        rng = np.random.default_rng([k, 1])
        for _ in range(per_network):
            s, d = (int(x) for x in rng.choice(arrays.n_nodes, 2, replace=False))
            yield arrays, s, d


def _pairs(n: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [tuple(int(x) for x in rng.choice(n, 2, replace=False)) for _ in range(k)]


def _quality_table(rows) -> list[str]:
    out = ["| algorithm | requests | security | consumed Mb | kb@0.5 | kb@0.9 | segment nodes | below disjoint "
           "| gain over disjoint | largest loss | ms/request |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['what']} | {r['n']} | {r['security']:.4f} | {r['consumed_mb']:.3f} | {r['kb50']:.1f} "
                   f"| {r['kb90']:.1f} | {r['segment_nodes']:.2f} | {100 * r['below']:.1f}% | {r['gain']:+.4f} "
                   f"| {r['worst']:.4f} | {r['ms']:.2f} |")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.segmentation", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    ap.add_argument("--out", default="benchmarks/segmentation.md")
    args = ap.parse_args(argv)
    started = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    t_start = time.perf_counter()
    mach = machine()
    q = args.quick
    sections = []
    for label, net, k, budget in (
        ("100 nodes: `waxman(100, trusted=10, p=0.8, seed=1)`", waxman(100, trusted=10, p=0.8, seed=1), 400, 30.0),
        ("1,000 nodes: `waxman_large(1000, trusted=100, p=0.8, seed=1)`", waxman_large(1000, trusted=100, p=0.8, seed=1), 100, 60.0),
    ):
        rows = timing(net.arrays, _pairs(net.n_nodes, 20 if q else k), budget / (5 if q else 1))
        sections += [f"### {label}", "", "| algorithm | median ms | x smr | requests |", "|---|---:|---:|---:|"]
        sections += [f"| {r['what']} | {r['median_ms']:.3f} | {r['ratio']:.2f} | {r['requests']} |" for r in rows]
        sections.append("")
        print("\n".join(sections[-len(rows) - 4:]), flush=True)
    paper_rows = quality(list(paper_requests(40 if q else 1000)))
    print("\n".join(_quality_table(paper_rows)), flush=True)
    large_rows = quality(list(large_requests(2 if q else 10, 5 if q else 20)))
    print("\n".join(_quality_table(large_rows)), flush=True)
    wall = time.perf_counter() - t_start
    out = ["# Segmentation: what it buys and what it costs", "",
           f"- Command: `python -m benchmarks.segmentation {' '.join(sys.argv[1:])}`".rstrip(),
           f"- Date: {started} (UTC), {wall:.0f} s", f"- Machine: {mach}", "",
           "## Time per request", "",
           "The algorithm function on the frozen arrays (what `route` calls), every algorithm on each",
           "request in turn (interleaved, the first one rotating), seeded random pairs; `x smr` = median / smr's",
           "median in the same run.", ""]
    out += sections
    out += ["## Quality", "",
            "Same requests for every row. Security: exact, end to end; consumed: sum of hops x B; kb@eps: key",
            "length of the `paper` reconstruction; below disjoint: share of requests whose security is lower than",
            "`disjoint`'s by more than 1e-12; gain: mean security difference to `disjoint`; largest loss: the",
            "largest shortfall against `disjoint` on one request; ms/request: this routing, measured in this loop.", "",
            f"### The paper's setting: 100 nodes, 10 trusted relays, p = 0.8 ({paper_rows[0]['n']} trials of `qkdseg reproduce --seed 0`)", ""]
    out += _quality_table(paper_rows)
    out += ["", f"### `waxman_large(1000, trusted=100, p=0.8, seed=k)`, k = 0..{(2 if q else 10) - 1}, "
            f"{5 if q else 20} requests each (`numpy.random.default_rng([k, 1])`)", ""]
    out += _quality_table(large_rows)
    Path(args.out).write_text("\n".join(out) + "\n", encoding="utf-8")
    print(f"wrote {args.out} in {wall:.0f} s")


if __name__ == "__main__":
    main()
