"""One unit of work: a chunk of trials, every point and algorithm, as rows.

Rows are plain dicts with the columns of docs/experiments.md. A chunk's rows
depend only on the spec and the trial indices, never on which process or
machine ran it, so every backend gives identical results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..api import route_indices
from ..network import NetworkArrays, arrays_from_edges
from ..reconstruction import paper_key_counts, reconstruct
from ..topology import waxman_draw
from .spec import SweepSpec, eps_column, trial_seed


class TrialTopology:
    """The Waxman graph of one trial seed, drawn once and shared by every
    point: positions and links first, then (per trusted count) the trusted
    relays, exactly as :func:`qkdseg.waxman` draws them."""

    def __init__(self, spec: SweepSpec, seed: int) -> None:
        rng = np.random.default_rng(seed)
        _, self.eu, self.ev, self.length = waxman_draw(spec.nodes, spec.alpha, spec.beta, rng)
        self._state = rng.bit_generator.state
        self.n = spec.nodes
        self.pool = np.full(len(self.eu), spec.pool_bits, dtype=np.int64)
        self.mean_degree = 2.0 * len(self.eu) / self.n
        self._trusted: dict[int, np.ndarray] = {}

    def trusted(self, count: int) -> np.ndarray:
        if count not in self._trusted:
            rng = np.random.default_rng()
            rng.bit_generator.state = self._state
            mask = np.zeros(self.n, dtype=bool)
            mask[rng.choice(self.n, size=count, replace=False)] = True
            self._trusted[count] = mask
        return self._trusted[count]

    def arrays(self, p_untrusted: float, n_trusted: int, trusted_p: float = 1.0) -> NetworkArrays:
        trusted = self.trusted(n_trusted)
        p = np.where(trusted, trusted_p, p_untrusted)
        return arrays_from_edges(self.eu, self.ev, p, trusted, self.pool, self.length)


def request_pair(seed: int, n: int) -> tuple[int, int]:
    """The trial's source and destination (node indices)."""
    s, d = np.random.default_rng([seed, 1]).choice(n, size=2, replace=False)
    return int(s), int(d)


#: Algorithms whose paths do not depend on the value of ``p`` when every
#: untrusted relay has the same ``p`` in (0, 1) and trusted relays have 1:
#: MSP's walk only asks ``p > 0``; ExDijkstra's order over such costs is
#: (number of untrusted relays, hops, node order) for any such ``p``, because
#: costs are exact multiples of one quantised ``-log p`` (network.COST_SCALE).
#: SMR is not here: its step 1 compares securities, which depend on ``p``.
P_INDEPENDENT = frozenset({"msp", "disjoint", "single"})


def evaluate(
    arrays: NetworkArrays, s: int, d: int, spec: SweepSpec, seed: int, cache: dict | None = None, key: Any = None
) -> list[dict[str, Any]]:
    """Every algorithm of ``spec`` on one request: the metric columns.

    With a ``cache`` (a dict) and a ``key`` naming the topology, pair and
    trusted placement (not ``p``), the paths of :data:`P_INDEPENDENT`
    algorithms are computed once per key and re-evaluated at each ``p``.
    """
    rows = []
    for name in spec.algorithms:
        opts = dict(spec.algorithm_options.get(name, {}))
        if name == "msp":
            opts.setdefault("seed", seed)
        routed = None
        cacheable = cache is not None and name in P_INDEPENDENT
        if cacheable:
            routed = cache.get((name, key))
        r = route_indices(arrays, s, d, name, routed=routed, **opts)
        segs = [[list(p) for p in seg] for seg in r.index_paths]
        if cacheable and routed is None:
            cache[(name, key)] = ([arrays.index[v] for v in r.segment_nodes], segs)
        row: dict[str, Any] = {
            "algorithm": name,
            "security": r.security,
            "security_independent": r.security_independent,
            "consumed_bits": r.consumed_bits,
            "key_consumption_rate": r.key_consumption_rate,
            "blocked": r.blocked,
            "segments": len(r.segments),
            "paths": sum(len(seg) for seg in r.index_paths),
            "hops": r.hops,
        }
        chain = list(arrays.index[v] for v in r.segment_nodes[1:-1])
        if r.blocked:
            bits = [0] * len(spec.epsilons)
        elif spec.reconstruction == "paper":  # one pass for every level
            bits = [c * r.block_bits for c in paper_key_counts(arrays.p, segs, chain, spec.epsilons)]
        else:
            bits = [reconstruct(spec.reconstruction, arrays.p, segs, chain, e, r.block_bits).key_bits for e in spec.epsilons]
        for eps, b in zip(spec.epsilons, bits):
            row[eps_column(eps)] = int(b)
        rows.append(row)
    return rows


def run_chunk(spec_dict: dict, trials: Sequence[int]) -> list[dict[str, Any]]:
    """Rows of trials ``trials`` (indices) of the sweep ``spec_dict``.

    Top-level and picklable with plain arguments, so process pools and Dask
    workers can run it.
    """
    spec = SweepSpec.from_dict(spec_dict)
    rows: list[dict[str, Any]] = []
    for t in trials:
        seed = trial_seed(spec.seed, t)
        topo = TrialTopology(spec, seed)
        s, d = request_pair(seed, spec.nodes)
        cache: dict = {}
        for fig in spec.figures:
            for k, (p, n_trusted) in enumerate(fig.points):
                arrays = topo.arrays(p, n_trusted)
                use_cache = 0.0 < p < 1.0
                base = {
                    "figure": fig.name,
                    "point": k,
                    "p_untrusted": p,
                    "n_trusted": n_trusted,
                    "trial": int(t),
                    "seed": seed,
                    "nodes": spec.nodes,
                    "links": len(topo.eu),
                    "mean_degree": topo.mean_degree,
                    "source": s,
                    "destination": d,
                }
                for row in evaluate(arrays, s, d, spec, seed, cache if use_cache else None, n_trusted):
                    rows.append({**base, **row})
    return rows
