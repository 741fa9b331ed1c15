"""``smr-level``'s wide search (issue 39; docs/algorithms.md states its space).

Beyond the successive search's routes (SMR's step-2 paths over the chains it draws), every
chain of at most ``max_relays`` distinct trusted relays, and per segment ``(u, v)`` every
non-empty subset of its candidates ``C(u, v)``: the ``k`` least paths by hops and the ``k``
most secure (:func:`~qkdseg.routing.level_paths.least_paths`), and, on a segment of the
successive search's chosen chain, the paths of its full route (at most :data:`MAX_UNION` in
all). A route's value is its hops; it meets ``epsilon`` when ``prod p(chain) x prod_j
exact security of segment j`` does (the successive search's rule: the product is exact
without a risky relay shared between segments, and a lower bound otherwise).

The search is a best-first search over labels ``(node, relays so far, hops, product)`` from
the source, keyed by a lower bound on the hops of every completion, so the first complete
route popped is the least (ties: the higher product):

- a segment ``(u, v)`` is first pushed on a bound alone, without its paths: ``j x hops(u,
  v)``, ``j`` the fewest paths whose union could reach what the label still needs (each path
  at most as secure as the most secure ``u``-``v`` path of the whole network, so ``j`` paths
  at most ``1 - (1 - P)^j``, Harris), plus ``hops(v, target)``; only when that is popped are
  its candidates and their subset front computed (once per request);
- a label dominated by another at its node (no more relays, no more hops, no lower product)
  is dropped. Labels may revisit a relay: a chain with a repeated relay is never least (its
  loop adds hops and only lowers the product), so the least route found is a chain of
  distinct relays, and dropping dominated labels loses no completion.

With numba the whole search is one compiled call (:func:`wide_search_compiled`,
:func:`qkdseg._kernels.level_wide_nb`), the same heap order and so the same route; it also
leaves out a segment whose paths, leaving ``u`` (entering ``v``) by distinct neighbours, could
not reach the level in fewer hops than the route to beat (a segment no route of fewer hops
goes through, so nothing it would queue is ever taken or dominates what is).
"""

from __future__ import annotations

import heapq
import itertools
import math

import numpy as np

from .. import _kernels
from ..reconstruction.result import TOLERANCE
from .level_paths import Candidates, Rows, links_key, pair_candidates, split_paths

#: Default number of least paths per segment by each metric (**[choice]**, docs/algorithms.md).
DEFAULT_K = 3
#: Most candidate paths of one segment: the full route's are cut after this many (2^16 subsets).
MAX_UNION = _kernels.MAX_UNION

_DONE, _PENDING, _LABEL = 0, 1, 2


class _Segments:
    """The candidates ``C(u, v)`` and their subset fronts, computed once per request (those of a
    segment with no full-route paths added kept per network, :func:`pair_candidates`)."""

    def __init__(self, rows: Rows, source: int, target: int, rn, rl, k: int, extra: dict) -> None:
        self.rows, self.s, self.t, self.rn, self.rl, self.k, self.extra = rows, source, target, rn, rl, k, extra
        self.rl_key = links_key(rl)
        self.cands: dict[tuple[int, int], Candidates] = {}

    def _get(self, u: int, v: int) -> Candidates:
        key = (u, v)
        if key not in self.cands:
            cand = pair_candidates(self.rows, self.s, self.t, self.rn, self.rl, self.rl_key, u, v, self.k)
            more = [q for q in self.extra.get(key, ()) if q not in cand.paths][:MAX_UNION - len(cand.paths)]
            if more:
                cand = Candidates(self.rows.arrays, cand.paths + more, self.rows.kernel)
            self.cands[key] = cand
        return self.cands[key]

    def candidates(self, u: int, v: int) -> list[list[int]]:
        return self._get(u, v).paths

    def front(self, u: int, v: int) -> list[tuple[int, float, int]]:
        return self._get(u, v).front()


def wide_search(rows: Rows, source: int, target: int, rn: np.ndarray, rl: np.ndarray, eps: float,
                relays: list[int], k: int, below: float, extra: dict):
    """The least route of the wide space with fewer than ``below`` hops that meets ``eps``:
    ``(chain, paths per segment, hops, product)``, or ``None``.

    ``rows``: the network's rows (:func:`~qkdseg.routing.level_paths.network_rows`);
    ``rn``/``rl``: the request's masks (its ends never relay); ``relays``: the trusted relays
    chains are drawn from (at most all of them in one chain); ``extra``: ``(u, v) -> paths`` of
    the successive search's full route, added to those segments' candidates.
    """
    a = rows.arrays
    max_relays = len(relays)
    ends = [int(v) for v in relays] + [int(target)]
    p_end = [float(a.p[v]) for v in relays] + [1.0]
    to_target = rows.hops(target)
    rest = [float(to_target[v]) for v in relays] + [0.0]
    room = {key: min(MAX_UNION, 2 * k + len(paths)) for key, paths in extra.items()}
    segs = _Segments(rows, source, target, rn, rl, k, extra)
    accept = eps - TOLERANCE
    need = eps - TOLERANCE - 1e-9
    slack = a.n_nodes * 2.0**-32 + 1e-9  # a path has < n relays, each cost rounded by <= 2^-33
    heap: list = []
    seq = itertools.count()
    kept: dict[int, list[tuple[int, int, float]]] = {}  # node -> undominated (relays, hops, product)

    def dominated(v: int, nrel: int, hops: int, sig: float) -> bool:
        labels = kept.setdefault(v, [])
        if any(r <= nrel and h <= hops and s >= sig for r, h, s in labels):
            return True
        labels[:] = [(r, h, s) for r, h, s in labels if not (nrel <= r and hops <= h and sig >= s)]
        labels.append((nrel, hops, sig))
        return False

    def expand(label) -> None:
        u, nrel, hops, sig, _ = label
        dh_row, cost_row_u = rows.hops(u), rows.cost(u)
        for i in (range(len(ends)) if nrel < max_relays else (len(ends) - 1,)):
            v = ends[i]
            dh, cost = float(dh_row[v]), float(cost_row_u[v])
            if v == u or cost == math.inf or dh == math.inf:
                continue
            sv = sig * p_end[i]
            j = 1
            if need > 0.0:  # fewest paths whose union can reach x: 1 - (1 - P)^j >= x
                if sv <= 0.0 or need / sv > 1.0 + 1e-9:
                    continue
                x = need / sv
                pmax = min(1.0, math.exp(-cost + slack))
                if x < 1.0 and pmax < 1.0:
                    j = max(1, math.ceil(math.log1p(-x) / math.log1p(-pmax) - 1e-9))
                    if j > room.get((u, v), 2 * k):
                        continue
            key = hops + j * dh + rest[i]
            if key < below:
                heapq.heappush(heap, (key, -sv, next(seq), _PENDING, (label, v, sv)))

    expand((source, 0, 0, 1.0, ()))
    while heap:
        _, _, _, kind, data = heapq.heappop(heap)
        if kind == _DONE:
            return _route(segs, data)
        if kind == _LABEL:
            if (data[1], data[2], data[3]) in kept[data[0]]:  # not dominated since
                expand(data)
            continue
        label, v, sv = data
        u, nrel, hops, _, picks = label
        left = 0.0 if v == target else float(to_target[v])
        for h, sec, mask in segs.front(u, v):
            total = hops + h
            if total + left >= below:
                break
            sig = sv * sec
            if sig < accept:
                continue
            new = (v, nrel + (v != target), total, sig, picks + ((u, v, mask),))
            if v == target:
                heapq.heappush(heap, (float(total), -sig, next(seq), _DONE, new))
            elif not dominated(v, new[1], total, sig):
                heapq.heappush(heap, (total + left, -sig, next(seq), _LABEL, new))
    return None


def wide_search_compiled(rows: Rows, source: int, target: int, rn: np.ndarray, rl: np.ndarray, eps: float,
                         relays: list[int], k: int, below: float, ends_rows: tuple, route: tuple):
    """:func:`wide_search` in one compiled call (:func:`qkdseg._kernels.level_wide_nb`, the same
    order of the search, so the same route), the candidates kept in the network's
    :class:`~qkdseg.routing.level_paths.Arena`. ``ends_rows``: the rows of the source, the target and
    ``relays`` (:func:`~qkdseg.routing.level_paths.request_rows`); ``route``: the successive search's
    chain and full route as arrays ``(chain, flat, starts, seg)`` (its segments' extra candidates)."""
    a = rows.arrays
    hrows, crows, slot = ends_rows
    arena = rows.kept.arena
    with arena.lock:
        links = arena.links_id(rl)  # first: it may drop the arena
        found, chain, flat, starts, seg, hops, sig, arena.table, arena.ipool, arena.fpool = _kernels.level_wide_nb(
            a.indptr, a.indices, a.edge_of, a.cost, a.p, rn, rl, int(source), int(target),
            np.asarray(relays, dtype=np.int64), hrows, crows, slot, eps, TOLERANCE, int(k), float(below), *route,
            arena.table, arena.ipool, arena.fpool, arena.cnt, links)
    if not found:
        return None
    return tuple(chain.tolist()), split_paths(flat, starts, seg, chain.size + 1), int(hops), float(sig)


def _route(segs: _Segments, label):
    _, _, hops, sig, picks = label
    chain = tuple(u for u, _, _ in picks[1:])
    paths = [[q for i, q in enumerate(segs.candidates(u, v)) if mask >> i & 1] for u, v, mask in picks]
    return chain, paths, hops, sig
