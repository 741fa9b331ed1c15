"""``smr-level`` under threshold sharing (issue 40; docs/algorithms.md, "Threshold sharing").

With ``tolerate = T > 0`` each segment key is shared k-of-m over the
segment's ``m`` chosen paths (``k = m - T``) and is secret iff at least
``T + 1`` of them are intact (:func:`~qkdseg.security.threshold_security`).
A subset of paths must now hold at least ``T + 1`` paths, and one more path
can *lower* a segment's security (2-of-2 needs both paths intact, 2-of-3 any
two of three), so the XOR searches' frontiers (security rising with every
path added) do not apply. This search:

1. **Chains**: ``()`` (``disjoint``'s), SMR's step-1 chain and every ordered
   chain of the candidate trusted relays (closest by detour,
   :func:`~qkdseg.routing.smr_exact.candidate_relays`) when there are at most
   ``exhaustive`` of them, else the chains of one candidate **[choice: no
   greedy insertion here; the candidates' single chains and SMR's keep the
   search bounded]**.
2. **Paths** of a chain: SMR's step 2 over it (the full route,
   :func:`~qkdseg.routing.level_successive.full_route`). A chain with a
   segment of ``m <= T`` paths cannot carry a k-of-m key and is skipped: the
   algorithm looks for more paths on another chain before the request is
   refused.
3. Per segment, every subset of at least ``T + 1`` of its first
   :data:`MAX_THRESHOLD_ENUMERATED` paths (ExDijkstra order) is evaluated
   exactly (shared relays included); the least-hop subset for each security
   reached is kept (a frontier). Across segments, the least total hops whose
   product of segment securities times the chain's ``p`` meets ``epsilon``.
   The product is a lower bound on the route's exact security (each factor is
   an increasing event in the relays' safety: Harris' inequality), and the
   route taken is checked once more exactly.
4. The cheapest met chain wins (ties: the more secure, then the earlier).
   When none meets ``epsilon``, the most secure full route among the chains
   that can carry the sharing is returned (``met`` False; every reconstruction
   then finds no key); when no chain can, the full route of ``()`` is
   returned and :func:`qkdseg.route` refuses it naming the segment.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..network import NetworkArrays
from ..security.threshold import _threshold_security
from .level_paths import HopRows, Rows
from .level_successive import _meets, full_route, least_hops_across, pareto_front
from .smr import select_segment_nodes
from .smr_exact import candidate_relays, ordered_chains

#: Every subset of at least T + 1 paths is evaluated among a segment's first this many paths.
MAX_THRESHOLD_ENUMERATED = 10


def threshold_frontier(p: np.ndarray, paths: list[list[int]], tolerate: int) -> list[tuple[int, float, tuple]]:
    """``(hops, exact security, path indices)`` of the least-hop subsets of one segment's paths under k-of-m
    sharing, hops increasing and security strictly increasing; empty when it has ``m <= T`` paths.

    >>> p = np.array([1, .5, .5, .5, 1])
    >>> threshold_frontier(p, [[0, 1, 4], [0, 2, 4], [0, 3, 4]], 1)
    [(4, 0.25, (0, 1)), (6, 0.5, (0, 1, 2))]
    """
    n = min(len(paths), MAX_THRESHOLD_ENUMERATED)
    hops = [len(q) - 1 for q in paths]
    cands = []
    for size in range(tolerate + 1, n + 1):
        for sub in itertools.combinations(range(n), size):
            sec = _threshold_security(p, [[paths[i] for i in sub]], (), tolerate)
            cands.append((sum(hops[i] for i in sub), sec, sub))
    if len(paths) > n:  # every path: the full route's own segment
        every = tuple(range(len(paths)))
        cands.append((sum(hops), _threshold_security(p, [paths], (), tolerate), every))
    cands.sort(key=lambda c: (c[0], -c[1]))
    return pareto_front(cands)


def cheapest_threshold(p: np.ndarray, paths: list[list[list[int]]], chain: list[int], eps: float,
                       tolerate: int) -> tuple[int, float, tuple] | None:
    """The least total hops over one subset per segment whose product of segment securities under k-of-m
    sharing times ``prod p(chain)`` meets ``eps``: ``(hops, product, subsets)``, or ``None``."""
    fronts = [threshold_frontier(p, seg, tolerate) for seg in paths]
    if not fronts or any(not f for f in fronts):
        return None
    return least_hops_across(fronts, math.prod(float(p[v]) for v in chain), eps)


def threshold_search(arrays: NetworkArrays, source: int, target: int, rn: np.ndarray, rl: np.ndarray, rows: Rows,
                     cap: int | None, limit: int, max_paths: int | None, eps: float, tolerate: int, kernel: str):
    """``smr-level``'s route under k-of-m sharing: ``(segment_nodes, paths, info)`` as
    :func:`~qkdseg.routing.smr_level.smr_level` returns it (module docstring)."""
    dist = HopRows(rows)
    cands, _ = candidate_relays(arrays, source, target, rn, kernel, cap, dist=dist)
    paper = tuple(select_segment_nodes(arrays, source, target, removed_nodes=rn, removed_links=rl, kernel=kernel)[1:-1])
    if ordered_chains(len(cands)) <= limit:
        more = [c for k in range(1, len(cands) + 1) for c in itertools.permutations(cands, k)]
    else:
        more = [(c,) for c in cands]
    chains = list(dict.fromkeys([(), paper, *more]))
    best = None  # (hops, -security, order, chain, full paths, chosen paths)
    fallback = None  # (-security, order, chain, full paths): the most secure full route that can carry the sharing
    first_full = None
    for order, chain in enumerate(chains):
        full = full_route(arrays, [source, *chain, target], rn, rl, max_paths, kernel, rows)
        if first_full is None:
            first_full = (chain, full)
        if not full or any(len(seg) <= tolerate for seg in full):
            continue
        full_sec = _threshold_security(arrays.p, full, list(chain), tolerate)
        if fallback is None or (-full_sec, order) < fallback[:2]:
            fallback = (-full_sec, order, chain, full)
        plan = cheapest_threshold(arrays.p, full, list(chain), eps, tolerate)
        if plan is None:
            continue
        chosen = [[seg[i] for i in sub] for seg, sub in zip(full, plan[2])]
        sec = _threshold_security(arrays.p, chosen, list(chain), tolerate)
        if not _meets(sec, eps):  # pragma: no cover - the product is a lower bound (Harris)
            continue
        key = (plan[0], -sec, order)
        if best is None or key < best[:3]:
            best = (*key, chain, full, chosen)
    if best is not None:
        chain, full, chosen = best[3], best[4], best[5]
    elif fallback is not None:
        chain, full, chosen = fallback[2], fallback[3], None
    else:
        chain, full = first_full
        chosen = None
    carry = bool(full) and all(len(seg) > tolerate for seg in full)
    full_sec = _threshold_security(arrays.p, full, list(chain), tolerate) if carry else 0.0
    info = {"full_hops": sum(len(q) - 1 for seg in full for q in seg), "full_security": full_sec,
            "met": chosen is not None}
    return [source, *chain, target], full if chosen is None else chosen, info
