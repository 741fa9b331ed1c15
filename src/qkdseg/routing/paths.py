"""ExDijkstra: the most secure path (docs/model.md section 3), on the CSR form.

The path security ``Psec(P) = prod p(r)`` over the relays ``r`` of ``P``
(every node but the two ends) is multiplicative and non-increasing along a
path, so maximising it is Dijkstra over the additive node costs ``-log p``.
Ties are broken by fewer hops, then by node order: among the optimal
predecessors of a node the one with the smallest index wins. That rule fixes
the path completely, whatever order the heap pops equal labels in.

Relays with ``p = 0`` are unusable. The search's own end nodes are never
charged and never masked. Removed nodes and links are given as boolean masks,
so the graph is never copied.

:func:`exdijkstra_indices` is the one function every routing algorithm calls;
it dispatches to a compiled kernel (:mod:`qkdseg._kernels`, numba) or to
the readable pure-Python reference :func:`_exdijkstra_python`. Both return
exactly the same path; ``tests/test_kernels.py`` checks it.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from .. import _kernels
from ..network import NetworkArrays


def exdijkstra_indices(
    arrays: NetworkArrays,
    source: int,
    target: int,
    removed_nodes: np.ndarray | None = None,
    removed_links: np.ndarray | None = None,
    cost: np.ndarray | None = None,
    *,
    kernel: str | None = None,
) -> list[int] | None:
    """Most secure path between node indices ``source`` and ``target``.

    Parameters
    ----------
    arrays : NetworkArrays
        The frozen network.
    source, target : int
        Node indices; never charged, never masked.
    removed_nodes : bool array of length n, optional
        ``True`` marks a node that may not be used as a relay.
    removed_links : bool array of length m, optional
        ``True`` marks a link that may not be used.
    cost : float array of length n, optional
        Node costs (default ``arrays.cost = -log p``).
    kernel : {"numba", "python"}, optional
        Which implementation runs; default: numba when installed, unless
        ``QKDSEG_KERNEL=python``. Both give the same path.

    Returns
    -------
    list of int or None
        The path as node indices from ``source`` to ``target``, or ``None``
        when no usable path exists.
    """
    if _kernels.resolve_kernel(kernel) == "python":
        return _exdijkstra_python(arrays, source, target, removed_nodes, removed_links, cost)
    if source == target:
        return [source]
    n, m = arrays.n_nodes, arrays.n_links
    rn = np.zeros(n, dtype=np.bool_) if removed_nodes is None else np.asarray(removed_nodes, dtype=np.bool_)
    rl = np.zeros(m, dtype=np.bool_) if removed_links is None else np.asarray(removed_links, dtype=np.bool_)
    node_cost = arrays.cost if cost is None else np.asarray(cost, dtype=np.float64)
    path = _kernels.exdijkstra_nb(
        arrays.indptr, arrays.indices, arrays.edge_of, node_cost, rn, rl, int(source), int(target)
    )
    return path.tolist() if path.size else None


def _exdijkstra_python(
    arrays: NetworkArrays,
    source: int,
    target: int,
    removed_nodes: np.ndarray | None = None,
    removed_links: np.ndarray | None = None,
    cost: np.ndarray | None = None,
    link_cost: np.ndarray | None = None,
) -> list[int] | None:
    """The readable reference ExDijkstra (pure Python, :mod:`heapq`).

    Label of a node: ``(cost, hops)``, compared lexicographically; the heap
    pops ``(cost, hops, node)`` tuples. A node's predecessor is replaced on
    an equal label when the new one has a smaller index. The search stops
    when the target is settled. ``link_cost`` (per link, optional) is added
    for every link crossed: the pool-aware ``least-loaded`` searches on it.
    """
    if source == target:
        return [source]
    indptr, indices, edge_of = arrays._csr_lists
    node_cost = np.asarray(arrays.cost if cost is None else cost, dtype=np.float64).tolist()
    lc = None if link_cost is None else np.asarray(link_cost, dtype=np.float64).tolist()
    n = arrays.n_nodes
    inf = math.inf
    dist = [inf] * n
    hops = [0] * n
    pred = [-1] * n
    done = [False] * n
    rn = removed_nodes
    rl = removed_links
    dist[source] = 0.0
    heap = [(0.0, 0, source)]
    while heap:
        d, h, u = heapq.heappop(heap)
        if done[u]:
            continue
        done[u] = True
        if u == target:
            break
        for k in range(indptr[u], indptr[u + 1]):
            v = indices[k]
            if done[v]:
                continue
            if rl is not None and rl[edge_of[k]]:
                continue
            if v == target:
                c = d
            else:
                if rn is not None and rn[v]:
                    continue
                w = node_cost[v]
                if w == inf:
                    continue
                c = d + w
            if lc is not None:
                c += lc[edge_of[k]]
            nh = h + 1
            dv = dist[v]
            if c < dv or (c == dv and (nh < hops[v] or (nh == hops[v] and u < pred[v]))):
                better = c < dv or nh < hops[v]
                dist[v], hops[v], pred[v] = c, nh, u
                if better:
                    heapq.heappush(heap, (c, nh, v))
    if not done[target]:
        return None
    path = [target]
    while path[-1] != source:
        path.append(pred[path[-1]])
    path.reverse()
    return path


def successive_paths(arrays: NetworkArrays, find, removed_nodes: np.ndarray, removed_links: np.ndarray,
                     keep: np.ndarray, max_paths: int | None = None) -> list[list[int]]:
    """Paths from ``find(removed_nodes, removed_links)`` (a path or ``None``) one after another, each removing
    its relays not marked in ``keep`` and its links (the masks are modified), until none is found or there
    are ``max_paths``: the multipath rule of ``disjoint``, ``least-loaded`` and MSP's walks."""
    limit = max_paths if max_paths is not None else math.inf
    paths: list[list[int]] = []
    while len(paths) < limit:
        path = find(removed_nodes, removed_links)
        if path is None:
            break
        paths.append(path)
        for v in path[1:-1]:
            if not keep[v]:
                removed_nodes[v] = True
        for x, y in zip(path, path[1:]):
            removed_links[arrays.edge_index(x, y)] = True
    return paths


def path_links(arrays: NetworkArrays, path: list[int]) -> list[int]:
    """Link indices along a path of node indices."""
    return [arrays.edge_index(a, b) for a, b in zip(path, path[1:])]


def path_security(arrays: NetworkArrays, path: list[int]) -> float:
    """``Psec(P)``: the product of ``p`` over the relays (interior nodes)."""
    return float(np.prod(arrays.p[path[1:-1]])) if len(path) > 2 else 1.0
