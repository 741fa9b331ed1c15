"""The segments of ``smr-level``'s wide search (issue 39, docs/algorithms.md): whole-network
rows, the ``k`` least paths of a segment by hops and by security, and the front of the
subsets of its candidate paths.

- :func:`hop_row`, :func:`cost_row`: hop distances and least relay costs from one node to
  every node on the whole network (masks ignored, so lower bounds on hops and upper bounds on
  security for every search of every request), kept per network (its topology and ``p``) for
  the relays and targets asked for, so a request pays for the rows of its own target at most.
- :func:`least_paths`: Yen's algorithm, ``k`` least simple paths in the order
  ``(hops, cost, reversed nodes)`` or ``(cost, hops, reversed nodes)`` (ExDijkstra's order;
  ``cost`` the relays' ``-log p`` rounded as everywhere, so ties are exact).
- :func:`subset_front`: every non-empty subset of a segment's paths with its exact security
  (shared relays included), reduced to the least-hop subset for every reachable security.

Each has a compiled kernel (:mod:`qkdseg._kernels`) and a pure-Python one that returns
exactly the same (``tests/test_smr_level.py``). Up to :data:`MATRIX_NODES` nodes a network's
rows are kept as two n x n matrices the compiled searches read directly
(:meth:`Rows.shared`); larger networks stack a request's rows (:func:`request_rows`). The
compiled wide search keeps its segments' candidates and fronts in an :class:`Arena`.
"""

from __future__ import annotations

import heapq
import math
import threading
import weakref

import numpy as np

from .. import _kernels
from ..network import NetworkArrays
from ..security.components import intact_distribution
from .smr import _distances

#: Networks whose rows are kept (most recent first out when more).
_NETWORKS = 8
_ROWS: dict[tuple[int, int], _Rows] = {}
#: Guards the eviction and insertion into the kept rows and candidates (a key service routes from threads).
_LOCK = threading.Lock()


#: Segments whose candidates (under a set of removed links) are kept per network.
_PAIRS = 20_000
#: Up to this many nodes a network's rows are kept as two n x n matrices (every row fits: 2^22 floats each).
MATRIX_NODES = 2048


class _Rows:
    """The rows of one network, by node; at most ``limit`` of each kind (about 32 MB); and the
    unmasked candidates of the segments asked for (:func:`pair_candidates`; the compiled search's
    in :class:`Arena`)."""

    def __init__(self, arrays: NetworkArrays) -> None:
        n = arrays.n_nodes
        self.refs = (weakref.ref(arrays.indptr), weakref.ref(arrays.cost))
        self.hops: dict[int, np.ndarray] = {}
        self.cost: dict[int, np.ndarray] = {}
        self.limit = max(64, 2**22 // max(1, n))
        self.pairs: dict[tuple[int, int, int], Candidates] = {}
        self.arena = Arena()
        # up to MATRIX_NODES every row fits (the limit above): kept as two n x n matrices the compiled
        # searches read directly, ``slot[v] = v`` once both of ``v``'s rows are in
        self.matrix = n <= MATRIX_NODES
        if self.matrix:
            self.mats = (np.empty((n, n)), np.empty((n, n)))
            self.slot = np.full(n, -1, dtype=np.int64)

    def alive_for(self, arrays: NetworkArrays) -> bool:
        return self.refs[0]() is arrays.indptr and self.refs[1]() is arrays.cost


class Arena:
    """The candidates and subset fronts of the segments the compiled wide search asked for
    (:func:`qkdseg._kernels.level_wide_nb`: the same as :func:`pair_candidates`), in arrays that
    search reads and grows: an open-addressing ``table``, ``ipool``/``fpool`` records, ``cnt``.
    A request's removed links are known by an id; everything is dropped past :data:`_PAIRS`
    segments or 2^23 ints. One search at a time holds :attr:`lock`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.table = np.full((1024, 6), -1, dtype=np.int64)
        self.ipool = np.empty(1 << 14, dtype=np.int64)
        self.fpool = np.empty(1 << 12)
        self.cnt = np.zeros(3, dtype=np.int64)
        self.links: dict[bytes, int] = {b"": 0}

    def links_id(self, rl: np.ndarray) -> int:
        """The id of a set of removed links (0: none); call with :attr:`lock` held."""
        if self.cnt[2] > _PAIRS or self.ipool.size > 1 << 23:
            self.reset()
        key = links_key(rl)
        if key not in self.links:
            self.links[key] = len(self.links)
        return self.links[key]


def _rows(arrays: NetworkArrays) -> _Rows:
    """The rows of ``arrays``' network: shared by its views with other pools (``with_levels``),
    which keep the same adjacency and ``p`` arrays."""
    key = (id(arrays.indptr), id(arrays.cost))
    rows = _ROWS.get(key)
    if rows is None or not rows.alive_for(arrays):
        with _LOCK:
            rows = _ROWS[key] = _Rows(arrays)
            while len(_ROWS) > _NETWORKS:
                del _ROWS[next(iter(_ROWS))]
    return rows


def network_rows(arrays: NetworkArrays, kernel: str) -> Rows:
    """The rows of ``arrays``' network, read through ``kernel`` (a request holds it once)."""
    if kernel == "numba" and not _LOADED:
        _load_kernels(arrays)
    return Rows(_rows(arrays), arrays, kernel)


_LOADED: list[bool] = []


def _load_kernels(arrays: NetworkArrays) -> None:
    """Compile (or load from numba's cache) the kernels a request may need only later once per
    process, so that a warm-up request loads them even when its search never needs them (a
    request must not wait for the compiler): on a 3-node path those of the wide search's
    candidates, on ``arrays`` (its read-only arrays are a type of their own) the full route of a
    chain the wide search finds, and the exact security of a route whose paths share a relay."""
    indptr = np.array([0, 1, 3, 4], dtype=np.int64)  # the path 0 - 1 - 2
    indices = np.array([1, 0, 2, 1], dtype=np.int64)
    edge_of = np.array([0, 0, 1, 1], dtype=np.int64)
    _kernels.yen_nb(indptr, indices, edge_of, np.zeros(3), np.zeros(3, dtype=bool), np.zeros(2, dtype=bool), 0, 2, 2,
                    True, np.zeros(3))
    _kernels.subset_front_nb(1, np.zeros(1, dtype=np.int64), np.ones(1), np.ones(1, dtype=np.int64))
    a, n = arrays, arrays.n_nodes
    if n > 1:
        _kernels.round_robin_lb_nb(a.indptr, a.indices, a.edge_of, a.cost, a.trusted, np.zeros(n, dtype=bool),
                                   np.zeros(a.n_links, dtype=bool), np.array([0, n - 1], dtype=np.int64), 1,
                                   np.zeros((1, n)), np.ones(1, dtype=bool))
    _kernels.path_state_security_nb(1, np.zeros(1, dtype=np.int64), np.ones(1), np.ones(1), np.ones(1, dtype=np.int64))
    _LOADED.append(True)


class Rows:
    """:func:`hop_row` and :func:`cost_row` of one network for one request."""

    __slots__ = ("arrays", "kept", "kernel")

    def __init__(self, kept: _Rows, arrays: NetworkArrays, kernel: str) -> None:
        self.kept, self.arrays, self.kernel = kept, arrays, kernel

    def hops(self, v: int) -> np.ndarray:
        row = self.kept.hops.get(v)
        if row is None:
            row = self._keep(self.kept.hops, 0, v, np.asarray(_distances(self.arrays, int(v), "hops", self.kernel),
                                                              dtype=float))
        return row

    def cost(self, v: int) -> np.ndarray:
        row = self.kept.cost.get(v)
        if row is None:
            a = self.arrays
            row = self._keep(self.kept.cost, 1, v, _kernels.cost_row_nb(a.indptr, a.indices, a.cost, int(v))
                             if self.kernel == "numba" else _cost_row_python(a, int(v)))
        return row

    def _keep(self, table: dict, kind: int, v: int, row: np.ndarray) -> np.ndarray:
        """Keep a new row: in its matrix (a read-only view of it kept) or on its own."""
        kept = self.kept
        if kept.matrix:
            mat = kept.mats[kind]
            mat[v] = row
            row = mat[v]
        row.setflags(write=False)
        _keep(table, kept.limit, v, row)
        if kept.matrix and int(v) in kept.hops and int(v) in kept.cost:
            kept.slot[v] = v
        return row

    def shared(self, nodes) -> tuple | None:
        """The network's matrices and their ``slot`` with the rows of ``nodes`` in, or None (more
        than 2048 nodes: :func:`request_rows`)."""
        kept = self.kept
        if not kept.matrix:
            return None
        for v in nodes:
            if kept.slot[v] < 0:
                self.hops(v)
                self.cost(v)
        return (*kept.mats, kept.slot)


def _keep(table: dict, limit: int, key, value):
    """``table[key] = value``, the oldest entry dropped first when ``table`` holds ``limit``."""
    with _LOCK:
        if len(table) >= limit:
            del table[next(iter(table))]
        table[key] = value
    return value


def hop_row(arrays: NetworkArrays, v: int, kernel: str) -> np.ndarray:
    """Hop distance from ``v`` to every node on the whole network (``inf``: not connected)."""
    return network_rows(arrays, kernel).hops(int(v))


def cost_row(arrays: NetworkArrays, v: int, kernel: str) -> np.ndarray:
    """Least total cost of the relays strictly between every node and ``v`` on the whole network
    (``inf``: every path crosses a ``p = 0`` relay, or none exists)."""
    return network_rows(arrays, kernel).cost(int(v))


def request_rows(rows: Rows, ends: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The hop and cost rows of ``ends`` (distinct nodes) stacked for the compiled searches, and
    ``slot``: node -> its row (-1: none)."""
    slot = np.full(rows.arrays.n_nodes, -1, dtype=np.int64)
    slot[ends] = np.arange(len(ends))
    return np.stack([rows.hops(v) for v in ends]), np.stack([rows.cost(v) for v in ends]), slot


def split_paths(flat: np.ndarray, starts: np.ndarray, seg: np.ndarray, nseg: int) -> list[list[list[int]]]:
    """A compiled search's flat paths (path ``i``: ``flat[starts[i]:starts[i + 1]]``, in segment
    ``seg[i]``) as lists per segment."""
    paths: list[list[list[int]]] = [[] for _ in range(nseg)]
    flat, bounds = flat.tolist(), starts.tolist()
    for i, j in enumerate(seg.tolist()):
        paths[j].append(flat[bounds[i]:bounds[i + 1]])
    return paths


class HopRows(dict):
    """``node -> hop row``, filled on first use (the hop distances a request's chain search reads)."""

    def __init__(self, rows: Rows) -> None:
        super().__init__()
        self.rows = rows

    def __missing__(self, v: int) -> np.ndarray:
        row = self[v] = self.rows.hops(v)
        return row


def _cost_row_python(arrays: NetworkArrays, target: int) -> np.ndarray:
    indptr, indices, cost = arrays.indptr, arrays.indices, arrays.cost
    row = np.full(arrays.n_nodes, math.inf)
    row[target] = 0.0
    settled = np.zeros(arrays.n_nodes, dtype=bool)
    heap = [(0.0, target)]
    while heap:
        c, x = heapq.heappop(heap)
        if settled[x]:
            continue
        settled[x] = True
        w = 0.0 if x == target else float(cost[x])
        if w == math.inf:
            continue
        for y in indices[indptr[x]:indptr[x + 1]].tolist():
            if not settled[y] and c + w < row[y]:
                row[y] = c + w
                heapq.heappush(heap, (c + w, y))
    return row


class Candidates:
    """The ``k`` least paths of a segment by hops, then the ``k`` least by cost not already
    there, the relays they cross and their subset front (on demand)."""

    def __init__(self, arrays: NetworkArrays, paths: list[list[int]], kernel: str) -> None:
        self.paths = paths
        self.interior = {x for q in paths for x in q[1:-1]}
        self._arrays, self._kernel = arrays, kernel
        self._front: list | None = None

    def front(self) -> list[tuple[int, float, int]]:
        if self._front is None:
            self._front = subset_front(self._arrays.p, self.paths, self._kernel)
        return self._front


def segment_candidates(rows: Rows, rn: np.ndarray, rl: np.ndarray, u: int, v: int, k: int) -> list[list[int]]:
    """``least_paths`` by hops, then by cost (the new ones), under the masks."""
    out: list[list[int]] = []
    for by_hops in (True, False):
        for q in least_paths(rows, rn, rl, u, v, k, by_hops):
            if q not in out:
                out.append(q)
    return out


def links_key(rl: np.ndarray) -> bytes:
    """A hashable form of a set of removed links (empty when none is removed)."""
    return np.packbits(rl).tobytes() if rl.any() else b""


def pair_candidates(rows: Rows, source: int, target: int, rn: np.ndarray, rl: np.ndarray, rl_key: bytes, u: int,
                    v: int, k: int) -> Candidates:
    """The candidates of segment ``(u, v)`` for request ``(source, target)`` (``rn`` masks its ends
    only; ``rl`` its removed links, ``rl_key`` their :func:`links_key`): those with the same links
    removed and no node masked, kept per network, when none of their paths crosses an end of the
    request (then they are also its least paths: its paths are a subset of those), else computed
    under its masks."""
    arrays, kernel, kept = rows.arrays, rows.kernel, rows.kept
    key = (int(u), int(v), int(k), rl_key)
    cand = kept.pairs.get(key)
    if cand is None:
        free = np.zeros(arrays.n_nodes, dtype=bool)
        cand = _keep(kept.pairs, _PAIRS, key, Candidates(arrays, segment_candidates(rows, free, rl, u, v, k), kernel))
    if source not in cand.interior and target not in cand.interior:
        return cand
    return _avoiding(rows, rl, key, {int(source), int(target)}) or \
        Candidates(arrays, segment_candidates(rows, rn, rl, u, v, k), kernel)


#: How many least paths by each metric are kept for a segment whose candidates crossed a request's end.
LONGER = 2


def _avoiding(rows: Rows, rl: np.ndarray, key: tuple, ends: set[int]) -> Candidates | None:
    """The candidates of segment ``key = (u, v, k, links)`` whose relays avoid ``ends``, from its
    ``LONGER x k`` least paths by each metric with no node masked (kept per network): the paths of
    that order that avoid ``ends`` are, in the same order, the least paths with ``ends`` masked, so
    their first ``k`` are those (all of them when fewer paths exist than were listed). ``None``
    when fewer than ``k`` avoid ``ends`` and more paths may exist. Kept per network by the paths
    left, so their subset front is computed once."""
    kept, (u, v, k, _) = rows.kept, key
    longer = kept.pairs.get((*key, "longer"))
    if longer is None:
        free = np.zeros(rows.arrays.n_nodes, dtype=bool)
        longer = _keep(kept.pairs, _PAIRS, (*key, "longer"),
                       tuple(least_paths(rows, free, rl, u, v, LONGER * k, by) for by in (True, False)))
    picks = []
    for paths in longer:
        ok = [i for i, q in enumerate(paths) if ends.isdisjoint(q[1:-1])]
        if len(ok) < k and len(paths) == LONGER * k:
            return None
        picks.append(tuple(ok[:k]))
    cand = kept.pairs.get((*key, *picks))
    if cand is None:
        out = [longer[0][i] for i in picks[0]]
        out += [q for q in (longer[1][i] for i in picks[1]) if q not in out]
        cand = _keep(kept.pairs, _PAIRS, (*key, *picks), Candidates(rows.arrays, out, rows.kernel))
    return cand


def least_paths(rows: Rows, rn: np.ndarray, rl: np.ndarray, u: int, v: int, k: int, by_hops: bool) -> list[list[int]]:
    """The ``k`` least simple ``u -> v`` paths (fewer when there are fewer) by ``(hops, cost,
    reversed nodes)`` when ``by_hops``, else by ``(cost, hops, reversed nodes)``; relays not in
    ``rn`` and of finite cost, links not in ``rl`` (neither is modified)."""
    arrays = rows.arrays
    if rows.kernel == "numba":
        lb = rows.hops(v) if by_hops else rows.cost(v)
        nodes, starts = _kernels.yen_nb(arrays.indptr, arrays.indices, arrays.edge_of, arrays.cost, rn.copy(), rl.copy(),
                                        int(u), int(v), int(k), bool(by_hops), lb)
        flat, bounds = nodes.tolist(), starts.tolist()
        return [flat[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
    return _yen_python(arrays, rn.copy(), rl.copy(), u, v, k, by_hops)


def _path_key(path: list[int], cost: np.ndarray, by_hops: bool) -> tuple:
    c = 0.0
    for x in path[1:-1]:
        c += float(cost[x])
    hops = float(len(path) - 1)
    return (hops, c, path[::-1]) if by_hops else (c, hops, path[::-1])


def _lex_path_python(arrays: NetworkArrays, rn, rl, src: int, dst: int, by_hops: bool) -> list[int] | None:
    """The least ``src -> dst`` path by the key of :func:`least_paths` (plain Dijkstra on the
    label ``(primary, secondary)``, the smallest index among the optimal predecessors)."""
    indptr, indices, edge_of, cost = arrays.indptr, arrays.indices, arrays.edge_of, arrays.cost
    label = {src: (0.0, 0.0)}
    pred = {src: -1}
    done = set()
    heap = [(0.0, 0.0, src)]
    while heap:
        a, b, x = heapq.heappop(heap)
        if x in done:
            continue
        done.add(x)
        if x == dst:
            break
        for j in range(indptr[x], indptr[x + 1]):
            y = int(indices[j])
            if y in done or rl[edge_of[j]]:
                continue
            w = 0.0
            if y != dst:
                w = float(cost[y])
                if rn[y] or w == math.inf:
                    continue
            new = (a + 1.0, b + w) if by_hops else (a + w, b + 1.0)
            old = label.get(y)
            if old is None or new < old or (new == old and x < pred[y]):
                label[y], pred[y] = new, x
                if old is None or new < old:
                    heapq.heappush(heap, (*new, y))
    if dst not in done:
        return None
    path = [dst]
    while path[-1] != src:
        path.append(pred[path[-1]])
    return path[::-1]


def _yen_python(arrays: NetworkArrays, rn, rl, u: int, v: int, k: int, by_hops: bool) -> list[list[int]]:
    first = _lex_path_python(arrays, rn, rl, u, v, by_hops)
    if first is None or k <= 0:
        return []
    found = [first]
    cands: list[list[int]] = []
    while len(found) < k:
        prev = found[-1]
        for j in range(len(prev) - 1):
            root = prev[:j + 1]
            saved = [bool(rn[x]) for x in root[:-1]]
            rn[root[:-1]] = True
            links = {arrays.edge_index(q[j], q[j + 1]) for q in found if len(q) > j + 1 and q[:j + 1] == root}
            links = [e for e in links if not rl[e]]
            rl[links] = True
            spur = _lex_path_python(arrays, rn, rl, prev[j], v, by_hops)
            rl[links] = False
            for x, old in zip(root[:-1], saved):
                rn[x] = old
            if spur is not None:
                total = root[:-1] + spur
                if total not in found and total not in cands:
                    cands.append(total)
        if not cands:
            break
        best = min(cands, key=lambda q: _path_key(q, arrays.cost, by_hops))
        cands.remove(best)
        found.append(best)
    return found


def relay_groups(p: np.ndarray, paths: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The risky relays (``p < 1``) of ``paths`` grouped by the set of paths they are on:
    ``(masks, probs)``, ``probs[g]`` the product of the group's ``p`` (first seen first)."""
    on: dict[int, int] = {}
    for i, path in enumerate(paths):
        for x in path[1:-1]:
            if p[x] < 1.0:
                on[x] = on.get(x, 0) | (1 << i)
    by_mask: dict[int, float] = {}
    for x, mask in on.items():
        by_mask[mask] = by_mask.get(mask, 1.0) * float(p[x])
    return (np.fromiter(by_mask.keys(), dtype=np.int64, count=len(by_mask)),
            np.fromiter(by_mask.values(), dtype=np.float64, count=len(by_mask)))


def subset_front(p: np.ndarray, paths: list[list[int]], kernel: str) -> list[tuple[int, float, int]]:
    """``(hops, exact security, subset bit mask)`` of the least-hop non-empty subsets of
    ``paths``: hops increasing, security strictly increasing (ties: the smallest mask)."""
    m = len(paths)
    if m == 0:
        return []
    masks, probs = relay_groups(p, paths)
    hops = np.array([len(q) - 1 for q in paths], dtype=np.int64)
    if kernel == "numba":
        fh, fs, fm = _kernels.subset_front_nb(m, masks, probs, hops)
    else:
        fh, fs, fm = _front_numpy(m, masks, probs, hops)
    return list(zip(fh.tolist(), fs.tolist(), fm.tolist()))


def _front_numpy(m: int, masks: np.ndarray, probs: np.ndarray, hops: np.ndarray):
    """:func:`qkdseg._kernels.subset_front_nb` in numpy, the same arithmetic."""
    size = 1 << m
    states = np.arange(size, dtype=np.int64)
    dist = intact_distribution(m, masks, probs)
    for i in range(m):
        sel = states[(states >> i) & 1 == 1]
        dist[sel] += dist[sel ^ (1 << i)]
    sec = 1.0 - dist[(size - 1) ^ states]
    hs = ((states[:, None] >> np.arange(m)) & 1) @ hops
    order = np.lexsort((states[1:], -sec[1:], hs[1:])) + 1
    fh, fs, fm = [], [], []
    seen = -1
    for st in order.tolist():
        if hs[st] != seen:
            seen = hs[st]
            if not fs or sec[st] > fs[-1]:
                fh.append(int(hs[st]))
                fs.append(float(sec[st]))
                fm.append(st)
    return np.array(fh, dtype=np.int64), np.array(fs), np.array(fm, dtype=np.int64)
