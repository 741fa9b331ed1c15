"""Segment-based Multipath Routing, SMR (paper section III.B, docs/model.md section 3).

Step 1 picks segment nodes among the trusted relays, greedily from the source;
step 2 finds paths for every segment round-robin, removing after each path its
untrusted relays and its links for all segments. Trusted relays stay usable,
so several paths may cross them.

The request's own end nodes never relay another segment's key: they are
masked for every search (they are not relays of this request).
"""

from __future__ import annotations

import numpy as np
from scipy.sparse.csgraph import dijkstra as _cs_dijkstra

from .. import _kernels
from ..errors import InvalidRequest
from ..network import NetworkArrays
from ..security import exact_security
from .paths import exdijkstra_indices
from .registry import register

#: Absolute margin (probability) by which segmenting must beat the direct paths in step 1
#: (guards the "strictly better" test against floating-point noise).
STRICT_MARGIN = 1e-12

METRICS = ("hops", "length")


def round_robin_paths(
    arrays: NetworkArrays,
    segment_nodes: list[int],
    *,
    max_paths: int | None = None,
    removed_nodes: np.ndarray | None = None,
    removed_links: np.ndarray | None = None,
    kernel: str | None = None,
) -> list[list[list[int]]]:
    """SMR step 2: ExDijkstra paths per segment, round-robin, with removals.

    Each round gives every segment that still has one a path; after each path
    its untrusted relays and its links are removed for all segments. Stops
    when no segment finds a path or each has ``max_paths``. The masks given
    are copied, never modified. ``kernel`` as for
    :func:`~qkdseg.routing.paths.exdijkstra_indices`; with numba the whole
    round-robin runs in one compiled call.

    Returns
    -------
    list of lists of paths
        ``paths[j]`` holds segment ``j``'s paths as node-index lists.
    """
    n, m = arrays.n_nodes, arrays.n_links
    rn = np.zeros(n, dtype=bool) if removed_nodes is None else removed_nodes.copy()
    rl = np.zeros(m, dtype=bool) if removed_links is None else removed_links.copy()
    if _kernels.resolve_kernel(kernel) == "numba":
        return _round_robin_numba(arrays, segment_nodes, max_paths, rn, rl)
    trusted = arrays.trusted
    pairs = list(zip(segment_nodes, segment_nodes[1:]))
    paths: list[list[list[int]]] = [[] for _ in pairs]
    active = [True] * len(pairs)
    limit = max_paths if max_paths is not None else np.inf
    while any(active):
        for j, (a, b) in enumerate(pairs):
            if not active[j]:
                continue
            path = exdijkstra_indices(arrays, a, b, rn, rl, kernel="python")
            if path is None:
                active[j] = False
                continue
            paths[j].append(path)
            for v in path[1:-1]:
                if not trusted[v]:
                    rn[v] = True
            for x, y in zip(path, path[1:]):
                rl[arrays.edge_index(x, y)] = True
            if len(paths[j]) >= limit:
                active[j] = False
    return paths


def _round_robin_numba(arrays, segment_nodes, max_paths, rn, rl) -> list[list[list[int]]]:
    seg_nodes = np.asarray(segment_nodes, dtype=np.int64)
    limit = -1 if max_paths is None else int(max_paths)
    nodes, starts, seg = _kernels.round_robin_nb(
        arrays.indptr, arrays.indices, arrays.edge_of, arrays.cost, arrays.trusted, rn, rl, seg_nodes, limit
    )
    paths: list[list[list[int]]] = [[] for _ in range(len(segment_nodes) - 1)]
    flat = nodes.tolist()
    bounds = starts.tolist()
    for i, j in enumerate(seg.tolist()):
        paths[j].append(flat[bounds[i] : bounds[i + 1]])
    return paths


def _distances(arrays: NetworkArrays, source: int, metric: str, kernel: str) -> np.ndarray:
    if metric == "hops":
        if kernel == "numba":
            return _kernels.bfs_hops_nb(arrays.indptr, arrays.indices, int(source))
        return _cs_dijkstra(arrays.hop_matrix, directed=False, indices=source, unweighted=True)
    return _cs_dijkstra(arrays.length_matrix, directed=False, indices=source)


def _pair_security(arrays: NetworkArrays, segment_nodes: list[int], rn: np.ndarray, rl: np.ndarray, kernel: str) -> float:
    paths = round_robin_paths(arrays, segment_nodes, max_paths=2, removed_nodes=rn, removed_links=rl, kernel=kernel)
    return exact_security(arrays.p, paths, segment_nodes[1:-1])


def select_segment_nodes(
    arrays: NetworkArrays,
    source: int,
    target: int,
    *,
    metric: str = "hops",
    removed_nodes: np.ndarray | None = None,
    removed_links: np.ndarray | None = None,
    kernel: str | None = None,
) -> list[int]:
    """SMR step 1: the segment nodes ``[source, t1, ..., target]``.

    From ``cur = source``: take the unused trusted relay ``r`` minimising
    ``dist(cur, r) + dist(r, target)`` (ties: smallest index); keep it if two
    successive ExDijkstra paths per segment over ``cur -> r -> target`` are
    strictly more secure than two over ``cur -> target``; else stop.
    With the numba kernel and the ``hops`` metric the whole step runs in one
    compiled call (same decisions; a pair with a shared risky relay falls back
    to :func:`~qkdseg.security.exact_security`).
    """
    if metric not in METRICS:
        raise InvalidRequest(f"unknown segment metric {metric!r} (use {' or '.join(METRICS)})")
    n = arrays.n_nodes
    rn = np.zeros(n, dtype=bool) if removed_nodes is None else removed_nodes
    rl = np.zeros(arrays.n_links, dtype=bool) if removed_links is None else removed_links
    kernel = _kernels.resolve_kernel(kernel)
    if kernel == "numba" and metric == "hops":
        chosen, ok = _kernels.select_segment_nodes_nb(
            arrays.indptr, arrays.indices, arrays.edge_of, arrays.cost, arrays.p, arrays.trusted,
            np.asarray(rn, dtype=np.bool_), np.asarray(rl, dtype=np.bool_), int(source), int(target), STRICT_MARGIN,
        )
        if ok:
            return chosen.tolist()
        # a shared risky relay (trusted relays with p < 1): evaluate exactly below
    dist_t = _distances(arrays, target, metric, kernel)
    used = np.zeros(n, dtype=bool)
    used[[source, target]] = True
    candidates_all = arrays.trusted & ~rn
    chosen = [source]
    cur = source
    while True:
        cand = candidates_all & ~used & np.isfinite(dist_t)
        if not cand.any():
            break
        dist_c = _distances(arrays, cur, metric, kernel)
        score = np.where(cand, dist_c + dist_t, np.inf)
        r = int(np.argmin(score))
        if not np.isfinite(score[r]):
            break
        direct = _pair_security(arrays, [cur, target], rn, rl, kernel)
        segmented = _pair_security(arrays, [cur, r, target], rn, rl, kernel)
        if segmented > direct + STRICT_MARGIN:
            chosen.append(r)
            used[r] = True
            cur = r
        else:
            break
    chosen.append(target)
    return chosen


def request_masks(arrays: NetworkArrays, source: int, target: int, removed_links: np.ndarray | None):
    """Initial masks of a request: its end nodes never relay."""
    rn = np.zeros(arrays.n_nodes, dtype=bool)
    rn[[source, target]] = True
    rl = np.zeros(arrays.n_links, dtype=bool) if removed_links is None else removed_links
    return rn, rl


@register(
    "smr",
    "Segment-based multipath routing (Wang et al. 2023): segments at trusted relays, round-robin ExDijkstra paths",
    {
        "max_paths": "paths per segment (default: unlimited)",
        "metric": "segment-node distance: 'hops' (default) or 'length' (length_km)",
        "verify": "re-check step 1 against the full routes' exact security; no segment when that is better (default False)",
    },
)
def smr(
    arrays: NetworkArrays,
    source: int,
    target: int,
    *,
    removed_links: np.ndarray | None = None,
    max_paths: int | None = None,
    metric: str = "hops",
    verify: bool = False,
    kernel: str | None = None,
):
    """SMR on node indices; returns ``(segment_nodes, paths)``.

    With ``verify=True``, when step 1 chose segment nodes, the full route
    over them and the route with no segment node (``disjoint``'s) are both
    built by step 2 and compared by exact security; the route without
    segments is returned when it is strictly better (by more than
    :data:`STRICT_MARGIN`). So ``smr`` with ``verify`` is never below
    ``disjoint``. The paper's SMR is ``verify=False`` (the default).

    ``kernel`` ("numba" or "python", default: numba when installed) is for
    tests and benchmarks; both give the same result.
    """
    if not isinstance(verify, (bool, np.bool_)):
        raise InvalidRequest(f"verify={verify!r} must be True or False")
    rn, rl = request_masks(arrays, source, target, removed_links)
    segment_nodes = select_segment_nodes(
        arrays, source, target, metric=metric, removed_nodes=rn, removed_links=rl, kernel=kernel
    )
    paths = round_robin_paths(arrays, segment_nodes, max_paths=max_paths, removed_nodes=rn, removed_links=rl, kernel=kernel)
    if verify and len(segment_nodes) > 2:
        direct_nodes = [source, target]
        direct = round_robin_paths(arrays, direct_nodes, max_paths=max_paths, removed_nodes=rn, removed_links=rl, kernel=kernel)
        if exact_security(arrays.p, direct) > exact_security(arrays.p, paths, segment_nodes[1:-1]) + STRICT_MARGIN:
            return direct_nodes, direct
    return segment_nodes, paths
