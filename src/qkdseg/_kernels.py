"""Compiled hot loops (numba), with the kernel switch.

The routing kernels here are array-only transcriptions of the readable
reference :func:`qkdseg.routing.paths._exdijkstra_python`: same costs, same
label order ``(cost, hops, node)``, same predecessor rule (smallest index
among optimal predecessors), same target pruning. They run on the frozen CSR
form with boolean node and link masks; nothing is copied or converted per
call.

numba is optional (the ``fast`` extra). :data:`HAVE_NUMBA` says whether it
imported; :func:`default_kernel` picks ``"numba"`` when it did, unless the
environment variable ``QKDSEG_KERNEL=python`` forces the pure-Python
reference (the test suite runs both). Functions are compiled lazily on first
call and cached on disk (``cache=True``), so only the first run on a machine
pays the compile time.
"""

from __future__ import annotations

import heapq
import math
import os

import numpy as np

try:  # pragma: no cover - depends on the environment
    import numba as _numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    _numba = None
    HAVE_NUMBA = False

#: Kernel names accepted by ``kernel=`` arguments.
KERNELS = ("numba", "python")


def default_kernel() -> str:
    """``"numba"`` if numba is installed and ``QKDSEG_KERNEL`` does not say ``python``."""
    env = os.environ.get("QKDSEG_KERNEL", "").strip().lower()
    if env == "python" or not HAVE_NUMBA:
        return "python"
    return "numba"


def resolve_kernel(kernel: str | None) -> str:
    """Validate a ``kernel=`` argument (``None`` means :func:`default_kernel`)."""
    if kernel is None:
        return default_kernel()
    if kernel not in KERNELS:
        from .errors import InvalidRequest

        raise InvalidRequest(f"unknown kernel {kernel!r} (use numba or python)")
    if kernel == "numba" and not HAVE_NUMBA:
        from .errors import InvalidRequest

        raise InvalidRequest("kernel 'numba' needs numba: pip install 'qkdseg[fast]'")
    return kernel


def _jit(func):
    if HAVE_NUMBA:
        return _numba.njit(cache=True, nogil=True)(func)
    return func


# -- binary heap on (cost, hops, node), the order of Python's tuple heap ----------
@_jit
def _less(hd, hh, hv, i, j):
    if hd[i] != hd[j]:
        return hd[i] < hd[j]
    if hh[i] != hh[j]:
        return hh[i] < hh[j]
    return hv[i] < hv[j]


@_jit
def _heap_push(hd, hh, hv, size, d, h, v):
    i = size
    hd[i] = d
    hh[i] = h
    hv[i] = v
    while i > 0:
        parent = (i - 1) >> 1
        if _less(hd, hh, hv, i, parent):
            hd[i], hd[parent] = hd[parent], hd[i]
            hh[i], hh[parent] = hh[parent], hh[i]
            hv[i], hv[parent] = hv[parent], hv[i]
            i = parent
        else:
            break
    return size + 1


@_jit
def _heap_pop(hd, hh, hv, size):
    """Remove the root (read it before calling); returns the new size."""
    size -= 1
    hd[0] = hd[size]
    hh[0] = hh[size]
    hv[0] = hv[size]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            break
        best = left
        right = left + 1
        if right < size and _less(hd, hh, hv, right, left):
            best = right
        if _less(hd, hh, hv, best, i):
            hd[i], hd[best] = hd[best], hd[i]
            hh[i], hh[best] = hh[best], hh[i]
            hv[i], hv[best] = hv[best], hv[i]
            i = best
        else:
            break
    return size


# -- reachability --------------------------------------------------------------
@_jit
def _reachable(indptr, indices, edge_of, cost, rn, rl, source, target, mark, queue_s, queue_t):
    """Is there a usable path ``source -> target``? Bidirectional BFS.

    The two searches take turns, the one with the shorter queue first, and
    stop when they touch (a path exists) or one runs dry (none does). A
    failing ExDijkstra explores the whole component of ``source``; this
    check stops after the smaller side. Usable means what it means to the
    search: links not removed, relays not removed and with a finite cost.
    ``mark`` must hold -1 everywhere on entry (it is restored); the queues
    are scratch arrays of length n.
    """
    inf = np.inf
    mark[source] = -2
    mark[target] = -3
    queue_s[0] = source
    queue_t[0] = target
    hs, ts, ht, tt = 0, 1, 0, 1
    found = False
    while hs < ts and ht < tt and not found:
        if ts - hs <= tt - ht:
            u = queue_s[hs]
            hs += 1
            mine, other = -2, -3
        else:
            u = queue_t[ht]
            ht += 1
            mine, other = -3, -2
        for k in range(indptr[u], indptr[u + 1]):
            if rl[edge_of[k]]:
                continue
            v = indices[k]
            if mark[v] == other:
                found = True
                break
            if mark[v] == mine or rn[v] or cost[v] == inf:
                continue
            mark[v] = mine
            if mine == -2:
                queue_s[ts] = v
                ts += 1
            else:
                queue_t[tt] = v
                tt += 1
    for i in range(ts):
        mark[queue_s[i]] = -1
    for i in range(tt):
        mark[queue_t[i]] = -1
    return found


# -- A* lower bounds ---------------------------------------------------------------
@_jit
def _lower_bounds(indptr, indices, cost, source, target, lb, hd, hh, hv):
    """Fill ``lb`` with ``min(hc(v), R)`` and return ``R`` (inf: ``source`` not reached): ``hc(v)`` the least cost of the
    relays strictly between ``v`` and ``target`` on the full network (masks
    ignored, so it bounds every masked search from below), ``R = hc(source)``.

    A reverse Dijkstra from ``target`` that stops once ``source`` is settled
    (about the work of one forward search); nodes it did not settle have
    ``hc >= R`` and get ``R``. ``min`` of a consistent bound and a constant
    is consistent. Later searches of the same segment then explore little
    more than their path. Costs are exact multiples of 2^-32, so the sums
    are exact and ties stay ties.
    """
    n = indptr.size - 1
    settled = np.zeros(n, dtype=np.bool_)
    radius = _reverse_costs(indptr, indices, cost, source, target, lb, settled, hd, hh, hv)
    if radius == np.inf:  # source not reached: fall back to plain Dijkstra
        for i in range(n):
            lb[i] = 0.0
        return radius
    for i in range(n):
        if not settled[i]:
            lb[i] = radius
    return radius


@_jit
def _reverse_costs(indptr, indices, cost, source, target, lb, settled, hd, hh, hv):
    """A reverse Dijkstra from ``target`` over the relays' costs into ``lb`` (``inf`` where not
    settled), ``settled`` marking what it settled, stopping once ``source`` is settled
    (``source < 0``: never); returns ``lb[source]`` (inf: not reached). A node of infinite cost
    never relays, so the search does not go through it."""
    inf = np.inf
    for i in range(lb.size):
        lb[i] = inf
    lb[target] = 0.0
    size = _heap_push(hd, hh, hv, 0, 0.0, 0, target)
    while size > 0:
        x = hv[0]
        size = _heap_pop(hd, hh, hv, size)
        if settled[x]:
            continue
        settled[x] = True
        if x == source:
            return lb[x]
        wx = 0.0
        if x != target:
            wx = cost[x]
            if wx == inf:
                continue
        hx = lb[x] + wx
        for k in range(indptr[x], indptr[x + 1]):
            y = indices[k]
            if not settled[y] and hx < lb[y]:
                lb[y] = hx
                size = _heap_push(hd, hh, hv, size, hx, 0, y)
    return inf


# -- ExDijkstra --------------------------------------------------------------------
@_jit
def _trace_back(pred, source, target, out):
    """The path ``source -> target`` a search's predecessors give, into ``out``; returns its length."""
    length = 0
    v = target
    while v != source:
        out[length] = v
        length += 1
        v = pred[v]
    out[length] = source
    length += 1
    i = 0
    j = length - 1
    while i < j:  # reverse in place
        out[i], out[j] = out[j], out[i]
        i += 1
        j -= 1
    return length


@_jit
def _search(indptr, indices, edge_of, cost, rn, rl, source, target, dist, hops, pred, done, touched, hd, hh, hv, out, lb):
    """One target-pruned ExDijkstra search (:func:`_path_search` by ``(cost, hops)``)."""
    return _path_search(indptr, indices, edge_of, cost, rn, rl, source, target, dist, hops, pred, done, touched, hd, hh,
                        hv, out, lb, False, pred, touched, out, 0)


#: Nodes a spur search of Yen's algorithm settles before it checks that a path exists.
_SPUR_CHECK = 64


@_jit
def _path_search(indptr, indices, edge_of, cost, rn, rl, source, target, dist, hops, pred, done, touched, hd, hh, hv,
                 out, lb, by_hops, mark, queue_s, queue_t, check_at):
    """One target-pruned search for the least path by ``(cost, hops)`` (ExDijkstra), or by
    ``(hops, cost)`` when ``by_hops``; writes the path into ``out``.

    ``dist/hops/pred/done`` must be in their reset state (inf/0/-1/False) on
    entry; every entry this search changes is listed in ``touched`` and is
    reset before returning, so the work arrays can be reused. Returns the
    path length (0: no path).

    ``lb`` is a consistent lower bound on the cost (``by_hops``: the hops)
    still to come from each node to ``target`` (all zeros: plain Dijkstra;
    :func:`_lower_bounds` gives a tight one for the cost). The heap is
    ordered by ``(cost + lb, hops, node)`` (``(hops + lb, hops, node)``):
    with a consistent bound every optimal predecessor of a node is still
    settled before it (at most its key, fewer hops), so the labels, the
    smallest-index predecessor rule and hence the path are exactly those of
    plain Dijkstra (A*).

    Whether a path exists at all (:func:`_reachable`, with ``mark`` (-1 everywhere) and the
    queues as scratch; ExDijkstra passes ``pred``, ``touched``, ``out``) is checked first when
    ``check_at`` is 0, else once ``check_at`` nodes are settled without reaching ``target``
    (Yen's spur searches: most end before; a failing one stops there). Either way the path is
    the same.
    """
    if check_at == 0 and source != target and not _reachable(indptr, indices, edge_of, cost, rn, rl, source, target,
                                                             mark, queue_s, queue_t):
        return 0
    inf = np.inf
    nt = 0
    dist[source] = 0.0
    touched[nt] = source
    nt += 1
    size = _heap_push(hd, hh, hv, 0, lb[source], 0, source)
    found = False
    settled = 0
    while size > 0:
        u = hv[0]
        size = _heap_pop(hd, hh, hv, size)
        if done[u]:
            continue
        done[u] = True
        if u == target:
            found = True
            break
        settled += 1
        if settled == check_at and not _reachable(indptr, indices, edge_of, cost, rn, rl, source, target, mark, queue_s,
                                                  queue_t):
            break
        d = dist[u]
        h = hops[u]
        for k in range(indptr[u], indptr[u + 1]):
            v = indices[k]
            if done[v]:
                continue
            if rl[edge_of[k]]:
                continue
            if v == target:
                c = d
            else:
                if rn[v]:
                    continue
                w = cost[v]
                if w == inf:
                    continue
                c = d + w
            nh = h + 1
            dv = dist[v]
            if by_hops:  # (hops, cost); an unreached node has dist inf
                take = dv == inf or nh < hops[v] or (nh == hops[v] and (c < dv or (c == dv and u < pred[v])))
                better = dv == inf or nh < hops[v] or c < dv
                key = nh + lb[v]
            else:
                take = c < dv or (c == dv and (nh < hops[v] or (nh == hops[v] and u < pred[v])))
                better = c < dv or nh < hops[v]
                key = c + lb[v]
            if take:
                if dv == inf and pred[v] == -1:
                    touched[nt] = v
                    nt += 1
                dist[v] = c
                hops[v] = nh
                pred[v] = u
                if better:
                    size = _heap_push(hd, hh, hv, size, key, nh, v)
    length = _trace_back(pred, source, target, out) if found else 0
    for i in range(nt):
        v = touched[i]
        dist[v] = inf
        hops[v] = 0
        pred[v] = -1
        done[v] = False
    return length



@_jit
def _work(n, m2):
    dist = np.full(n, np.inf)
    hops = np.zeros(n, dtype=np.int64)
    pred = np.full(n, -1, dtype=np.int64)
    done = np.zeros(n, dtype=np.bool_)
    touched = np.empty(n, dtype=np.int64)
    cap = m2 + 2
    hd = np.empty(cap)
    hh = np.empty(cap, dtype=np.int64)
    hv = np.empty(cap, dtype=np.int64)
    out = np.empty(n, dtype=np.int64)
    return dist, hops, pred, done, touched, hd, hh, hv, out


@_jit
def exdijkstra_nb(indptr, indices, edge_of, cost, rn, rl, source, target):
    """ExDijkstra path as an int64 array (empty: no path)."""
    n = indptr.size - 1
    dist, hops, pred, done, touched, hd, hh, hv, out = _work(n, indices.size)
    lb = np.zeros(n)
    length = _search(indptr, indices, edge_of, cost, rn, rl, source, target, dist, hops, pred, done, touched, hd, hh, hv, out, lb)
    return out[:length].copy()


@_jit
def round_robin_nb(indptr, indices, edge_of, cost, trusted, rn, rl, seg_nodes, max_paths):
    """SMR step 2 (round-robin with removals) in one call.

    ``rn`` and ``rl`` are modified (pass copies). ``max_paths < 0`` means
    unlimited. Returns ``(nodes, starts, seg)``: path ``i`` is
    ``nodes[starts[i]:starts[i+1]]`` and belongs to segment ``seg[i]``.
    """
    nseg = seg_nodes.size - 1
    lbs = np.zeros((max(nseg, 0), indptr.size - 1))
    lb_ready = np.zeros(max(nseg, 0), dtype=np.bool_)
    return round_robin_lb_nb(indptr, indices, edge_of, cost, trusted, rn, rl, seg_nodes, max_paths, lbs, lb_ready)


@_jit
def round_robin_lb_nb(indptr, indices, edge_of, cost, trusted, rn, rl, seg_nodes, max_paths, lbs, lb_ready):
    """:func:`round_robin_nb` with the A* bounds given: row ``j`` of ``lbs`` is
    segment ``j``'s where ``lb_ready[j]``, else it is computed there (and
    ``lb_ready[j]`` set). Any consistent bound gives the same paths."""
    n = indptr.size - 1
    dist, hops, pred, done, touched, hd, hh, hv, out = _work(n, indices.size)
    nseg = seg_nodes.size - 1
    active = np.ones(max(nseg, 0), dtype=np.bool_)
    count = np.zeros(max(nseg, 0), dtype=np.int64)
    cap_nodes = 64
    nodes = np.empty(cap_nodes, dtype=np.int64)
    cap_paths = 16
    starts = np.zeros(cap_paths + 1, dtype=np.int64)
    seg = np.empty(cap_paths, dtype=np.int64)
    npaths = 0
    nnodes = 0
    n_active = nseg
    while n_active > 0:
        for j in range(nseg):
            if not active[j]:
                continue
            a = seg_nodes[j]
            b = seg_nodes[j + 1]
            if not lb_ready[j] and a != b:
                _lower_bounds(indptr, indices, cost, a, b, lbs[j], hd, hh, hv)
                lb_ready[j] = True
            length = _search(indptr, indices, edge_of, cost, rn, rl, a, b, dist, hops, pred, done, touched, hd, hh, hv, out, lbs[j])
            if length == 0:
                active[j] = False
                n_active -= 1
                continue
            # store the path
            while nnodes + length > cap_nodes:
                cap_nodes *= 2
                grown = np.empty(cap_nodes, dtype=np.int64)
                grown[:nnodes] = nodes[:nnodes]
                nodes = grown
            if npaths + 1 > cap_paths:
                cap_paths *= 2
                g1 = np.zeros(cap_paths + 1, dtype=np.int64)
                g1[: npaths + 1] = starts[: npaths + 1]
                starts = g1
                g2 = np.empty(cap_paths, dtype=np.int64)
                g2[:npaths] = seg[:npaths]
                seg = g2
            for i in range(length):
                nodes[nnodes + i] = out[i]
            nnodes += length
            seg[npaths] = j
            npaths += 1
            starts[npaths] = nnodes
            # removals: untrusted relays and the links used
            remove_path_nb(indptr, indices, edge_of, trusted, rn, rl, out, length)
            count[j] += 1
            if max_paths >= 0 and count[j] >= max_paths:
                active[j] = False
                n_active -= 1
    return nodes[:nnodes].copy(), starts[: npaths + 1].copy(), seg[:npaths].copy()


@_jit
def bfs_hops_nb(indptr, indices, source):
    """Hop distance from ``source`` to every node (inf where unreachable)."""
    n = indptr.size - 1
    dist = np.full(n, np.inf)
    queue = np.empty(n, dtype=np.int64)
    no_mask = np.empty(0, dtype=np.bool_)
    bfs_hops_into_nb(indptr, indices, indices, no_mask, no_mask, False, source, dist, queue)
    return dist


@_jit
def bfs_hops_into_nb(indptr, indices, edge_of, usable, rl, masked, source, dist, queue):
    """Breadth-first hop distances from ``source``, written into ``dist``.

    ``dist`` must hold ``inf`` everywhere on entry; ``queue`` is work space
    of at least n entries. With ``masked``, the search only enters a node
    ``v`` with ``usable[v]`` over a link ``k`` with ``not rl[edge_of[k]]``
    (MSP's distances to the target through usable relays); without it,
    every node and link counts (``bfs_hops_nb``) and the masks are not read.
    """
    dist[source] = 0.0
    queue[0] = source
    head = 0
    tail = 1
    while head < tail:
        u = queue[head]
        head += 1
        du = dist[u] + 1.0
        for k in range(indptr[u], indptr[u + 1]):
            v = indices[k]
            if dist[v] == np.inf and (not masked or (usable[v] and not rl[edge_of[k]])):
                dist[v] = du
                queue[tail] = v
                tail += 1


@_jit
def remove_path_nb(indptr, indices, edge_of, trusted, rn, rl, path, length):
    """Remove a found path from the next searches (SMR step 2, MSP, the placement trace).

    Marks the untrusted relays ``path[1:length-1]`` in ``rn`` and every link
    ``path[i] - path[i+1]`` in ``rl``, finding the link by searching the
    row of ``path[i]`` in the CSR form (the first entry that reaches
    ``path[i+1]``, as ``Network.edge_index`` does).
    """
    for i in range(1, length - 1):
        if not trusted[path[i]]:
            rn[path[i]] = True
    for i in range(length - 1):
        x = path[i]
        y = path[i + 1]
        for k in range(indptr[x], indptr[x + 1]):
            if indices[k] == y:
                rl[edge_of[k]] = True
                break


# -- SMR step 1 ---------------------------------------------------------------------
@_jit
def _pair_security_nb(indptr, indices, edge_of, cost, p, trusted, rn, rl, seg_nodes, mark):
    """Security of two round-robin paths per segment over ``seg_nodes``
    (:func:`route_security_nb` with ``max_paths = 2``)."""
    return route_security_nb(indptr, indices, edge_of, cost, p, trusted, rn, rl, seg_nodes, 2, mark)


@_jit
def route_security_nb(indptr, indices, edge_of, cost, p, trusted, rn, rl, seg_nodes, max_paths, mark):
    """Security of the round-robin paths (SMR step 2, at most ``max_paths``
    per segment, ``< 0``: unlimited) over ``seg_nodes``; ``rn``, ``rl`` are
    not modified.

    Returns ``(security, shared)``. ``shared`` is True when a risky relay
    (``p < 1``) occurs in more than one path or in the chain: the caller must
    then use the exact evaluator. Otherwise the value is the product formula,
    which is exact without shared relays (as :func:`qkdseg.security.exact_security`).
    ``mark`` is an all-False work array of length n, left all-False.
    """
    nodes, starts, seg = round_robin_nb(indptr, indices, edge_of, cost, trusted, rn.copy(), rl.copy(), seg_nodes, max_paths)
    return product_security_nb(nodes, starts, seg, seg_nodes, p, mark)


@_jit
def product_security_nb(nodes, starts, seg, seg_nodes, p, mark):
    """``(security, shared)`` of round-robin paths as :func:`round_robin_nb`
    returns them (see :func:`route_security_nb`)."""
    nseg = seg_nodes.size - 1
    counts = np.zeros(nseg, dtype=np.int64)
    for i in range(seg.size):
        counts[seg[i]] += 1
    for j in range(nseg):
        if counts[j] == 0:
            return 0.0, False
    shared = False
    for i in range(seg.size):
        for k in range(starts[i] + 1, starts[i + 1] - 1):
            v = nodes[k]
            if p[v] < 1.0:
                if mark[v]:
                    shared = True
                mark[v] = True
    for k in range(1, seg_nodes.size - 1):
        v = seg_nodes[k]
        if p[v] < 1.0:
            if mark[v]:
                shared = True
            mark[v] = True
    for i in range(seg.size):
        for k in range(starts[i] + 1, starts[i + 1] - 1):
            mark[nodes[k]] = False
    for k in range(1, seg_nodes.size - 1):
        mark[seg_nodes[k]] = False
    if shared:
        return 0.0, True
    total = 1.0
    for j in range(nseg):
        miss = 1.0
        for i in range(seg.size):
            if seg[i] != j:
                continue
            prod = 1.0
            risky = 0
            for k in range(starts[i] + 1, starts[i + 1] - 1):
                v = nodes[k]
                if p[v] < 1.0:
                    prod *= p[v]
                    risky += 1
            miss *= (1.0 - prod) if risky > 0 else 0.0
        total *= 1.0 - miss
    prod = 1.0
    risky = 0
    for k in range(1, seg_nodes.size - 1):
        v = seg_nodes[k]
        if p[v] < 1.0:
            prod *= p[v]
            risky += 1
    if risky > 0:
        miss = 1.0 - prod
        total *= 1.0 - miss
    return total, False


@_jit
def _step1_any(trusted, rn, used, dist_t):
    """Is there an unused trusted relay, not masked, that reaches the target (SMR step 1)?"""
    for v in range(trusted.size):
        if trusted[v] and not rn[v] and not used[v] and dist_t[v] != np.inf:
            return True
    return False


@_jit
def _step1_relay(trusted, rn, used, dist_c, dist_t):
    """SMR step 1's next relay: of those, the least ``dist_c + dist_t`` (smallest index; -1: no
    finite sum)."""
    r = -1
    best = np.inf
    for v in range(trusted.size):
        if trusted[v] and not rn[v] and not used[v] and dist_t[v] != np.inf:
            sc = dist_c[v] + dist_t[v]
            if sc < best:
                best = sc
                r = v
    return r


@_jit
def select_segment_nodes_nb(indptr, indices, edge_of, cost, p, trusted, rn, rl, source, target, margin):
    """SMR step 1 with hop distances, in one call.

    Returns ``(chosen, ok)``; ``ok`` is False when a pair evaluation met a
    shared risky relay (possible only with trusted relays of ``p < 1``), and
    the caller must rerun step 1 with the exact evaluator.
    """
    n = indptr.size - 1
    dist_t = bfs_hops_nb(indptr, indices, target)
    used = np.zeros(n, dtype=np.bool_)
    used[source] = True
    used[target] = True
    mark = np.zeros(n, dtype=np.bool_)
    chosen = np.empty(n + 1, dtype=np.int64)
    nchosen = 0
    chosen[nchosen] = source
    nchosen += 1
    cur = source
    pair = np.empty(2, dtype=np.int64)
    triple = np.empty(3, dtype=np.int64)
    while True:
        if not _step1_any(trusted, rn, used, dist_t):
            break
        dist_c = bfs_hops_nb(indptr, indices, cur)
        r = _step1_relay(trusted, rn, used, dist_c, dist_t)
        if r < 0:
            break
        pair[0] = cur
        pair[1] = target
        direct, sh1 = _pair_security_nb(indptr, indices, edge_of, cost, p, trusted, rn, rl, pair, mark)
        triple[0] = cur
        triple[1] = r
        triple[2] = target
        segmented, sh2 = _pair_security_nb(indptr, indices, edge_of, cost, p, trusted, rn, rl, triple, mark)
        if sh1 or sh2:
            return chosen[:0].copy(), False
        if segmented > direct + margin:
            chosen[nchosen] = r
            nchosen += 1
            used[r] = True
            cur = r
        else:
            break
    chosen[nchosen] = target
    nchosen += 1
    return chosen[:nchosen].copy(), True


# -- exact security: distribution over intact paths ------------------------------
@_jit
def path_state_security_nb(m, masks, probs, q, cmasks):
    """See :func:`qkdseg.security.components._path_state_security` (same arithmetic)."""
    size = 1 << m
    dist = np.zeros(size)
    dist[size - 1] = 1.0
    for g in range(masks.size):
        keep = ~masks[g]
        pg = probs[g]
        lose = 1.0 - pg
        # S & keep <= S, so walking S upwards reads each dist[S] before any
        # write lands on it from a larger state: in place is safe (a state
        # the group cannot change gets w * pg + w * (1 - pg))
        for st in range(size):
            w = dist[st]
            dist[st] = w * pg
            dist[st & keep] += w * lose
    miss = np.ones(size)
    for i in range(m):
        half = 1 << i
        f = 1.0 - q[i]
        for st in range(half):
            miss[half + st] = miss[st] * f
    total = 0.0
    for st in range(size):
        w = dist[st]
        if w != 0.0:
            for c in range(cmasks.size):
                w *= 1.0 - miss[st & cmasks[c]]
            total += w
    return total


# -- MSP: seeded self-avoiding random walks ---------------------------------------------
@_jit
def _pairwise_sum(a, n):
    """``a[:n].sum()`` as numpy computes it for float64 (pairwise summation, 8 accumulators), ``n <= 128``."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[i]
        return res
    r0, r1, r2, r3, r4, r5, r6, r7 = a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
    i = 8
    while i < n - (n % 8):
        r0 += a[i]
        r1 += a[i + 1]
        r2 += a[i + 2]
        r3 += a[i + 3]
        r4 += a[i + 4]
        r5 += a[i + 5]
        r6 += a[i + 6]
        r7 += a[i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[i]
        i += 1
    return res


@_jit
def msp_walks_nb(indptr, indices, edge_of, p, trusted, rn, rl, source, target, wtab, uniforms, max_paths, max_steps):
    """MSP's walks (:mod:`qkdseg.routing.msp`) on arrays, drawing from ``uniforms`` in order.

    ``uniforms`` are the successive ``rng.random()`` values of the Python
    reference; ``wtab[k] = exp(-beta * k)`` computed by numpy. The weighted
    draw repeats the reference's arithmetic (numpy's pairwise sum, then the
    cumulative sum, then ``searchsorted(side="right")``), so the paths are
    the same. ``max_paths``/``max_steps`` < 0: unlimited. ``rn``/``rl`` are
    modified (pass copies).

    Returns ``(nodes, starts, used, ok)``: path ``i`` is
    ``nodes[starts[i]:starts[i+1]]``; ``used`` uniforms were drawn; ``ok``
    is False when ``uniforms`` ran out (call again with more).
    """
    n = indptr.size - 1
    inf = np.inf
    deg = indptr[source + 1] - indptr[source]
    nodes = np.empty(n * (deg + 1) + 2, dtype=np.int64)
    starts = np.zeros(deg + 2, dtype=np.int64)
    npaths = 0
    nn = 0
    pos = 0
    usable = np.empty(n, dtype=np.bool_)
    dist = np.empty(n)
    queue = np.empty(n, dtype=np.int64)
    visited = np.empty(n, dtype=np.bool_)
    stack = np.empty(n, dtype=np.int64)
    maxdeg = 0
    for u in range(n):
        if indptr[u + 1] - indptr[u] > maxdeg:
            maxdeg = indptr[u + 1] - indptr[u]
    cand = np.empty(maxdeg, dtype=np.int64)
    w = np.empty(maxdeg)
    cdf = np.empty(maxdeg)
    while max_paths < 0 or npaths < max_paths:
        for v in range(n):
            usable[v] = (not rn[v]) and p[v] > 0.0
            dist[v] = inf
            visited[v] = False
        usable[source] = False
        usable[target] = False
        # hop distances to the target over usable links, through usable relays
        bfs_hops_into_nb(indptr, indices, edge_of, usable, rl, True, target, dist, queue)
        # the walk
        visited[source] = True
        stack[0] = source
        depth = 1
        steps = 0
        found = False
        while depth > 0:
            if max_steps >= 0 and steps >= max_steps:
                break
            u = stack[depth - 1]
            nc = 0
            for k in range(indptr[u], indptr[u + 1]):
                v = indices[k]
                if not rl[edge_of[k]] and not visited[v] and (v == target or (usable[v] and dist[v] != inf)):
                    cand[nc] = v
                    nc += 1
            steps += 1
            if nc == 0:
                depth -= 1
                continue
            if nc > 1:
                if pos >= uniforms.size:
                    return nodes[:nn].copy(), starts[: npaths + 1].copy(), pos, False
                dmin = dist[cand[0]]
                for i in range(1, nc):
                    if dist[cand[i]] < dmin:
                        dmin = dist[cand[i]]
                for i in range(nc):
                    w[i] = wtab[int(dist[cand[i]] - dmin)]
                total = _pairwise_sum(w, nc) if nc <= 128 else w[:nc].sum()
                acc = 0.0
                for i in range(nc):
                    acc += w[i] / total
                    cdf[i] = acc
                last = cdf[nc - 1]
                for i in range(nc):
                    cdf[i] = cdf[i] / last
                x = uniforms[pos]
                pos += 1
                pick = 0
                while pick < nc and cdf[pick] <= x:
                    pick += 1
                if pick >= nc:  # as numpy's cand[searchsorted(...)] would fail; cannot happen with x < 1
                    pick = nc - 1
                v = cand[pick]
            else:
                v = cand[0]
            stack[depth] = v
            depth += 1
            if v == target:
                found = True
                break
            visited[v] = True
        if not found:
            break
        for i in range(depth):
            nodes[nn + i] = stack[i]
        nn += depth
        npaths += 1
        starts[npaths] = nn
        remove_path_nb(indptr, indices, edge_of, trusted, rn, rl, stack, depth)
    return nodes[:nn].copy(), starts[: npaths + 1].copy(), pos, True


# -- smr-level's wide search (issue 39): whole-network rows, k least paths, subset fronts ---
@_jit
def cost_row_nb(indptr, indices, cost, target):
    """The least total cost of the relays strictly between every node and ``target`` on the
    whole network (masks ignored; ``inf``: none has finite cost): :func:`_lower_bounds`
    without the stop at a source, so a consistent A* bound for every search to ``target``
    and ``exp(-row[u])`` an upper bound on the ``Psec`` of every ``u``-``target`` path."""
    n = indptr.size - 1
    cap = indices.size + 2
    lb = np.empty(n)
    _reverse_costs(indptr, indices, cost, -1, target, lb, np.zeros(n, dtype=np.bool_), np.empty(cap),
                   np.empty(cap, dtype=np.int64), np.empty(cap, dtype=np.int64))
    return lb


@_jit
def _path_key(path, cost, by_hops):
    c = 0.0
    for i in range(1, path.size - 1):
        c += cost[path[i]]
    if by_hops:
        return float(path.size - 1), c
    return c, float(path.size - 1)


@_jit
def _key_less(a1, a2, pa, b1, b2, pb):
    """``(a1, a2, reversed pa) < (b1, b2, reversed pb)``."""
    if a1 != b1:
        return a1 < b1
    if a2 != b2:
        return a2 < b2
    i = pa.size - 1
    j = pb.size - 1
    while i >= 0 and j >= 0:
        if pa[i] != pb[j]:
            return pa[i] < pb[j]
        i -= 1
        j -= 1
    return i < j


@_jit
def _same_path(a, b):
    if a.size != b.size:
        return False
    for i in range(a.size):
        if a[i] != b[i]:
            return False
    return True


@_jit
def _link_id(indptr, indices, edge_of, x, y):
    for k in range(indptr[x], indptr[x + 1]):
        if indices[k] == y:
            return edge_of[k]
    return -1


@_jit
def _pool_add(pool, starts, count, path, length):
    """Append ``path[:length]`` to a flat pool of paths (grown by doubling); returns ``(pool, starts, count)``."""
    need = starts[count] + length
    if need > pool.size:
        grown = np.empty(max(2 * pool.size, need), dtype=np.int64)
        grown[:starts[count]] = pool[:starts[count]]
        pool = grown
    if count + 2 > starts.size:
        g2 = np.zeros(2 * starts.size, dtype=np.int64)
        g2[:count + 1] = starts[:count + 1]
        starts = g2
    pool[starts[count]:need] = path[:length]
    starts[count + 1] = need
    return pool, starts, count + 1


@_jit
def _in_pool(pool, starts, count, alive, path, length):
    for i in range(count):
        if alive[i] and starts[i + 1] - starts[i] == length:
            same = True
            for t in range(length):
                if pool[starts[i] + t] != path[t]:
                    same = False
                    break
            if same:
                return True
    return False


@_jit
def yen_nb(indptr, indices, edge_of, cost, rn, rl, u, v, k, by_hops, lb):
    """The ``k`` least simple ``u -> v`` paths by ``(hops, cost, reversed nodes)`` (``by_hops``) or
    ``(cost, hops, reversed nodes)``, in that order: Yen's algorithm over :func:`_path_search`.
    ``rn``/``rl`` are restored on return. Returns ``(nodes, starts)``: path ``i`` is
    ``nodes[starts[i]:starts[i+1]]``."""
    n = indptr.size - 1
    dist, hops, pred, done, touched, hd, hh, hv, out = _work(n, indices.size)
    mark = np.full(n, -1, dtype=np.int64)
    queue_s = np.empty(n, dtype=np.int64)
    queue_t = np.empty(n, dtype=np.int64)
    total = np.empty(n, dtype=np.int64)
    fpool = np.empty(64, dtype=np.int64)  # the paths found, in order
    fstarts = np.zeros(k + 1, dtype=np.int64)
    nfound = 0
    cpool = np.empty(256, dtype=np.int64)  # the candidates (alive or taken)
    cstarts = np.zeros(17, dtype=np.int64)
    ncand = 0
    calive = np.zeros(16, dtype=np.bool_)
    ck1 = np.empty(16)
    ck2 = np.empty(16)
    every = np.ones(k + 1, dtype=np.bool_)
    length = 0
    if k > 0:
        length = _path_search(indptr, indices, edge_of, cost, rn, rl, u, v, dist, hops, pred, done, touched, hd, hh, hv,
                              out, lb, by_hops, mark, queue_s, queue_t, _SPUR_CHECK)
    if length > 0:
        fpool, fstarts, nfound = _pool_add(fpool, fstarts, nfound, out, length)
    saved = np.empty(n, dtype=np.bool_)
    links = np.empty(k + 1, dtype=np.int64)
    while 0 < nfound < k:
        p0 = fstarts[nfound - 1]
        plen = fstarts[nfound] - p0
        for j in range(plen - 1):
            spur = fpool[p0 + j]
            for i in range(j):
                saved[i] = rn[fpool[p0 + i]]
                rn[fpool[p0 + i]] = True
            nl = 0
            for q in range(nfound):
                q0 = fstarts[q]
                if fstarts[q + 1] - q0 > j + 1:
                    same = True
                    for i in range(j + 1):
                        if fpool[q0 + i] != fpool[p0 + i]:
                            same = False
                            break
                    if same:
                        e = _link_id(indptr, indices, edge_of, fpool[q0 + j], fpool[q0 + j + 1])
                        if e >= 0 and not rl[e]:
                            rl[e] = True
                            links[nl] = e
                            nl += 1
            length = _path_search(indptr, indices, edge_of, cost, rn, rl, spur, v, dist, hops, pred, done, touched, hd,
                                  hh, hv, out, lb, by_hops, mark, queue_s, queue_t, _SPUR_CHECK)
            for i in range(nl):
                rl[links[i]] = False
            for i in range(j - 1, -1, -1):
                rn[fpool[p0 + i]] = saved[i]
            if length == 0:
                continue
            for i in range(j):
                total[i] = fpool[p0 + i]
            for i in range(length):
                total[j + i] = out[i]
            tl = j + length
            if _in_pool(fpool, fstarts, nfound, every, total, tl) or _in_pool(cpool, cstarts, ncand, calive, total, tl):
                continue
            if ncand + 1 > calive.size:
                g = np.zeros(2 * calive.size, dtype=np.bool_)
                g[:ncand] = calive[:ncand]
                calive = g
                g1 = np.empty(2 * ck1.size)
                g1[:ncand] = ck1[:ncand]
                ck1 = g1
                g2 = np.empty(2 * ck2.size)
                g2[:ncand] = ck2[:ncand]
                ck2 = g2
            a, b = _path_key(total[:tl], cost, by_hops)
            ck1[ncand] = a
            ck2[ncand] = b
            calive[ncand] = True
            cpool, cstarts, ncand = _pool_add(cpool, cstarts, ncand, total, tl)
        best = -1
        for i in range(ncand):
            if calive[i] and (best < 0 or _key_less(ck1[i], ck2[i], cpool[cstarts[i]:cstarts[i + 1]], ck1[best], ck2[best],
                                                    cpool[cstarts[best]:cstarts[best + 1]])):
                best = i
        if best < 0:
            break
        calive[best] = False
        seg = cpool[cstarts[best]:cstarts[best + 1]]
        fpool, fstarts, nfound = _pool_add(fpool, fstarts, nfound, seg, seg.size)
    return fpool[:fstarts[nfound]].copy(), fstarts[:nfound + 1].copy()


@_jit
def subset_front_nb(m, masks, probs, hops):
    """Every non-empty subset ``S`` of ``m`` paths: its exact security ``P(some path of S has
    every relay safe)`` and its hops; returns the front ``(hops, security, S)``, hops
    increasing and security strictly increasing, each the most secure at its hops (ties: the
    smallest ``S``). ``masks[g]``/``probs[g]``: a group of risky relays on exactly the paths
    ``masks[g]``, all safe with ``probs[g]``. The same arithmetic as the numpy version in
    :mod:`qkdseg.routing.level_paths`: the distribution over the set of intact paths, then its
    sums over subsets (``Z[T] = P(intact paths within T)``), ``security(S) = 1 - Z[~S]``."""
    size = 1 << m
    dist = np.zeros(size)
    dist[size - 1] = 1.0
    moved = np.empty(size)
    for g in range(masks.size):
        keep = ~masks[g]
        pg = probs[g]
        lose = 1.0 - pg
        for st in range(size):
            moved[st] = 0.0
        for st in range(size):
            moved[st & keep] += dist[st] * lose
        for st in range(size):
            dist[st] = dist[st] * pg + moved[st]
    for i in range(m):
        bit = 1 << i
        for st in range(size):
            if st & bit:
                dist[st] += dist[st ^ bit]
    total_hops = 0
    for i in range(m):
        total_hops += hops[i]
    best = np.full(total_hops + 1, -1.0)
    arg = np.full(total_hops + 1, -1, dtype=np.int64)
    hs = np.zeros(size, dtype=np.int64)
    for st in range(1, size):
        low = st & -st
        i = 0
        while (1 << i) != low:
            i += 1
        h = hs[st ^ low] + hops[i]
        hs[st] = h
        sc = 1.0 - dist[(size - 1) ^ st]
        if sc > best[h]:
            best[h] = sc
            arg[h] = st
    nf = 0
    fh = np.empty(total_hops + 1, dtype=np.int64)
    fs = np.empty(total_hops + 1)
    fm = np.empty(total_hops + 1, dtype=np.int64)
    last = -1.0
    for h in range(total_hops + 1):
        if arg[h] >= 0 and best[h] > last:
            fh[nf] = h
            fs[nf] = best[h]
            fm[nf] = arg[h]
            last = best[h]
            nf += 1
    return fh[:nf].copy(), fs[:nf].copy(), fm[:nf].copy()


# -- smr-level's successive search: one chain's full route and its cheapest subsets ------------
@_jit
def _knapsack_front(p, nodes, starts, idx, cnt, fh, fs, fm):
    """``segment_frontier`` of :mod:`qkdseg.routing.smr_level` for paths that share no risky
    relay (the 0/1 knapsack over hops, the same float operations in the same order): writes
    ``(hops, security, path mask)`` into ``fh/fs/fm`` and returns their number."""
    # states (hops, prod(1 - Psec), mask), hops strictly increasing, f strictly decreasing
    cap = 1
    for i in range(cnt):
        cap += starts[idx[i] + 1] - starts[idx[i]] - 1
    sh = np.zeros(cap + 1, dtype=np.int64)
    sf = np.ones(cap + 1)
    sm = np.zeros(cap + 1, dtype=np.int64)
    ns = 1
    th = np.empty(2 * (cap + 1), dtype=np.int64)
    tf = np.empty(2 * (cap + 1))
    tm = np.empty(2 * (cap + 1), dtype=np.int64)
    for i in range(cnt):
        q = idx[i]
        psec = 1.0
        for t in range(starts[q] + 1, starts[q + 1] - 1):
            psec *= p[nodes[t]]
        hop = starts[q + 1] - starts[q] - 1
        c = 1.0 - psec
        # stable merge of states and grown states by (hops, f), states first on ties, then the filter
        a = 0
        b = 0
        nt = 0
        while a < ns or b < ns:
            take_a = False
            if b >= ns:
                take_a = True
            elif a < ns:
                gh = sh[b] + hop
                gf = sf[b] * c
                take_a = sh[a] < gh or (sh[a] == gh and sf[a] <= gf)
            if take_a:
                h, f, m = sh[a], sf[a], sm[a]
                a += 1
            else:
                h, f, m = sh[b] + hop, sf[b] * c, sm[b] | (1 << i)
                b += 1
            if nt == 0 or f < tf[nt - 1]:
                th[nt] = h
                tf[nt] = f
                tm[nt] = m
                nt += 1
        for t in range(nt):
            sh[t] = th[t]
            sf[t] = tf[t]
            sm[t] = tm[t]
        ns = nt
    nf = 0
    for t in range(1, ns):
        sec = 1.0 - sf[t]
        if nf == 0 or sec > fs[nf - 1]:
            fh[nf] = sh[t]
            fs[nf] = sec
            fm[nf] = sm[t]
            nf += 1
    return nf


@_jit
def level_chain_nb(indptr, indices, edge_of, cost, p, trusted, rn, rl, seg_nodes, max_paths, lbs, eps, tol):
    """One chain of ``smr-level``'s successive search in one call: SMR's step 2 over
    ``seg_nodes`` (:func:`round_robin_lb_nb`, the A* bounds ``lbs`` given), then
    ``cheapest_subsets`` of :mod:`qkdseg.routing.smr_level` with the same float operations.

    Returns ``(nodes, starts, seg, status, hops, security, full, masks)``: status 1 met (the
    least hops, its product and per segment the mask of its paths, in segment order), 0 not
    met, 2 a segment whose paths share a risky relay or has more than 62 paths (the caller
    evaluates the paths returned itself); ``full`` the product for every path."""
    nseg = seg_nodes.size - 1
    ready = np.ones(max(nseg, 0), dtype=np.bool_)
    nodes, starts, seg = round_robin_lb_nb(indptr, indices, edge_of, cost, trusted, rn.copy(), rl.copy(), seg_nodes,
                                           max_paths, lbs, ready)
    masks = np.zeros(max(nseg, 1), dtype=np.int64)
    npaths = seg.size
    counts = np.zeros(max(nseg, 1), dtype=np.int64)
    for i in range(npaths):
        counts[seg[i]] += 1
    for j in range(nseg):
        if counts[j] == 0:
            return nodes, starts, seg, 0, 0, 0.0, 0.0, masks
        if counts[j] > 62:
            return nodes, starts, seg, 2, 0, 0.0, 0.0, masks
    # a risky relay on two paths of one segment: the caller's exact evaluator
    seen = np.full(indptr.size - 1, -1, dtype=np.int64)
    for j in range(nseg):
        for i in range(npaths):
            if seg[i] != j:
                continue
            for t in range(starts[i] + 1, starts[i + 1] - 1):
                v = nodes[t]
                if p[v] < 1.0:
                    if seen[v] == j:
                        return nodes, starts, seg, 2, 0, 0.0, 0.0, masks
                    seen[v] = j
    idx = np.empty(npaths, dtype=np.int64)
    offs = np.zeros(nseg + 1, dtype=np.int64)
    room = nseg  # a segment's front has at most one entry per hop count up to its total hops
    for i in range(npaths):
        room += starts[i + 1] - starts[i] - 1
    fh_all = np.empty(room, dtype=np.int64)
    fs_all = np.empty(room)
    fm_all = np.empty(room, dtype=np.int64)
    for j in range(nseg):
        cnt = 0
        for i in range(npaths):
            if seg[i] == j:
                idx[cnt] = i
                cnt += 1
        o = offs[j]
        nf = _knapsack_front(p, nodes, starts, idx, cnt, fh_all[o:], fs_all[o:], fm_all[o:])
        if nf == 0:  # every path's Psec below float resolution: left to the caller
            return nodes, starts, seg, 2, 0, 0.0, 0.0, masks
        offs[j + 1] = o + nf
    chain_sec = 1.0
    for k in range(1, seg_nodes.size - 1):
        chain_sec *= p[seg_nodes[k]]
    tail = np.ones(nseg + 1)
    for j in range(nseg - 1, -1, -1):
        tail[j] = tail[j + 1] * fs_all[offs[j + 1] - 1]
    full = chain_sec * tail[0]
    # states over the segments: (hops, product, masks so far), hops increasing, product strictly increasing
    sh = np.zeros(1, dtype=np.int64)
    ss = np.full(1, chain_sec)
    sm = np.zeros((1, max(nseg, 1)), dtype=np.int64)
    for j in range(nseg):
        o = offs[j]
        nf = offs[j + 1] - o
        nh = np.empty(sh.size * nf, dtype=np.int64)
        nsec = np.empty(sh.size * nf)
        src = np.empty(sh.size * nf, dtype=np.int64)
        pick = np.empty(sh.size * nf, dtype=np.int64)
        nn = 0
        for a in range(sh.size):
            for b in range(nf):
                x = ss[a] * fs_all[o + b]
                if x * tail[j + 1] >= eps - tol:
                    nh[nn] = sh[a] + fh_all[o + b]
                    nsec[nn] = x
                    src[nn] = a
                    pick[nn] = b
                    nn += 1
        if nn == 0:
            return nodes, starts, seg, 0, 0, 0.0, full, masks
        order = np.argsort(-nsec[:nn], kind="mergesort")
        order = order[np.argsort(nh[:nn][order], kind="mergesort")]
        keep = np.empty(nn, dtype=np.int64)
        nk = 0
        for t in range(nn):
            r = order[t]
            if nk == 0 or nsec[r] > nsec[keep[nk - 1]]:
                keep[nk] = r
                nk += 1
        sh2 = np.empty(nk, dtype=np.int64)
        ss2 = np.empty(nk)
        sm2 = np.zeros((nk, max(nseg, 1)), dtype=np.int64)
        for t in range(nk):
            r = keep[t]
            sh2[t] = nh[r]
            ss2[t] = nsec[r]
            sm2[t, :] = sm[src[r], :]
            sm2[t, j] = fm_all[o + pick[r]]
        sh, ss, sm = sh2, ss2, sm2
    for t in range(sh.size):
        if ss[t] >= eps - tol:
            masks[:] = sm[t, :]
            return nodes, starts, seg, 1, sh[t], ss[t], full, masks
    return nodes, starts, seg, 0, 0, 0.0, full, masks


# -- smr-level's successive search in one call (smr_level / level_successive) -------------------
@_jit
def _first_links_nb(indptr, indices, edge_of, cost, rn, rl, row_b, a, b, k):
    """:meth:`qkdseg.routing.level_successive.LevelEvaluator._first_links`: the sum of the ``k``
    least ``1 + hops(w, b)`` over the usable neighbours ``w`` of ``a`` (inf: fewer than ``k``)."""
    vals = np.empty(indptr[a + 1] - indptr[a])
    cnt = 0
    for q in range(indptr[a], indptr[a + 1]):
        w = indices[q]
        if rl[edge_of[q]]:
            continue
        if w != b and (rn[w] or cost[w] == np.inf):
            continue
        vals[cnt] = row_b[w]
        cnt += 1
    if cnt < k:
        return np.inf
    vals = np.sort(vals[:cnt])
    total = 0.0
    for i in range(k):
        total += vals[i]
    return total + k


@_jit
def _segment_bound_nb(indptr, indices, edge_of, cost, rn, rl, hrow_u, hrow_v, crow_v, u, v, x, slack):
    """:meth:`~qkdseg.routing.level_successive.LevelEvaluator._segment_hops`: the fewest hops of
    the paths of segment ``(u, v)`` of a full route that can reach the level ``x``."""
    d = hrow_u[v]
    if not np.isfinite(d):
        return np.inf
    k = 1
    if x > 0.0:
        h = crow_v[u]
        if h == np.inf:
            return np.inf
        ps = min(1.0, np.exp(-h + slack))
        if ps < 1.0:
            kf = np.ceil(np.log1p(-x) / np.log1p(-ps) - 1e-9)
            if kf > indices.size:  # more paths than links: none of them shares a link
                return np.inf
            k = max(1, int(kf))
    return max(k * d, _first_links_nb(indptr, indices, edge_of, cost, rn, rl, hrow_v, u, v, k),
               _first_links_nb(indptr, indices, edge_of, cost, rn, rl, hrow_u, v, u, k))


@_jit
def _fewest_hops_nb(indptr, indices, edge_of, cost, p, rn, rl, hrows, crows, slot, s, t, chain, need, slack):
    """:meth:`~qkdseg.routing.level_successive.LevelEvaluator.fewest_hops` (``hrows``/``crows``:
    hop and cost rows, node ``v``'s at ``slot[v]``)."""
    chain_sec = 1.0
    for i in range(chain.size):
        chain_sec *= p[chain[i]]
    if need > 0.0 and chain_sec <= need:
        return np.inf
    x = need / chain_sec if need > 0.0 else 0.0
    total = 0.0
    prev = s
    for j in range(chain.size + 1):
        nxt = chain[j] if j < chain.size else t
        total += _segment_bound_nb(indptr, indices, edge_of, cost, rn, rl, hrows[slot[prev]], hrows[slot[nxt]],
                                   crows[slot[nxt]], prev, nxt, x, slack)
        prev = nxt
    return total


@_jit
def _level_value_nb(indptr, indices, edge_of, cost, p, trusted, rn, rl, hrows, crows, slot, s, t, chain, within, bound,
                    max_paths, eps, tol, need, slack):
    """A chain's value in the successive search (:meth:`LevelEvaluator.__call__` without the memo):
    ``(flag, -hops, security, status, nodes, starts, seg, masks)``; status -1: not routed (the
    bound ``within`` or ``bound``), 2: a segment the caller must evaluate (fall back), else that
    of :func:`level_chain_nb`."""
    none = np.empty(0, dtype=np.int64)
    if within < np.inf and _fewest_hops_nb(indptr, indices, edge_of, cost, p, rn, rl, hrows, crows, slot, s, t, chain,
                                           need, slack) > within:
        return 0, 0, -1.0, -1, none, none, none, none
    nodes = np.empty(chain.size + 2, dtype=np.int64)
    nodes[0] = s
    nodes[1:chain.size + 1] = chain
    nodes[chain.size + 1] = t
    if bound < np.inf:
        legs = 0.0
        for j in range(chain.size + 1):
            legs += hrows[slot[nodes[j]], nodes[j + 1]]
        if legs > bound:
            return 0, 0, -1.0, -1, none, none, none, none
    lbs = np.empty((chain.size + 1, indptr.size - 1))
    for j in range(chain.size + 1):
        lbs[j, :] = crows[slot[nodes[j + 1]]]
    flat, starts, seg, status, hops, sec, full, masks = level_chain_nb(
        indptr, indices, edge_of, cost, p, trusted, rn, rl, nodes, max_paths, lbs, eps, tol)
    if status == 2:
        return 0, 0, 0.0, 2, none, none, none, none
    if status == 0:
        return 0, 0, full, 0, flat, starts, seg, masks
    return 1, -hops, sec, 1, flat, starts, seg, masks


@_jit
def _with_rows_nb(indptr, indices, cost, hrows, crows, slot, v, shared):
    """``(hrows, crows, ok)``: with node ``v``'s rows (added, and ``slot[v]`` set, when it had none;
    ``ok`` False instead when the rows are the network's ``shared`` ones, which the caller fills)."""
    if slot[v] >= 0:
        return hrows, crows, True
    if shared:
        return hrows, crows, False
    n = indptr.size - 1
    grown_h = np.empty((hrows.shape[0] + 1, n))
    grown_h[:hrows.shape[0]] = hrows
    grown_h[hrows.shape[0]] = bfs_hops_nb(indptr, indices, v)
    grown_c = np.empty((crows.shape[0] + 1, n))
    grown_c[:crows.shape[0]] = crows
    grown_c[crows.shape[0]] = cost_row_nb(indptr, indices, cost, v)
    slot[v] = hrows.shape[0]
    return grown_h, grown_c, True


@_jit
def _select_rows_nb(indptr, indices, edge_of, cost, p, trusted, rn, rl, source, target, margin, hrows, crows, slot,
                    shared, direct0, shared0):
    """:func:`select_segment_nodes_nb` (the same decisions) with the hop distances from the rows
    (whole-network BFS, as there), the A* bounds of its round robins from the cost rows (the same
    paths), and the first direct pair's security ``(direct0, shared0)`` given when ``direct0 >= 0``
    (chain ()'s first two paths). Returns ``(chosen, status, hrows, crows, node)``: status 1, 0 (a
    shared risky relay: the exact evaluator), 2 (``node`` has no rows in the ``shared`` ones)."""
    n = indptr.size - 1
    used = np.zeros(n, dtype=np.bool_)
    used[source] = True
    used[target] = True
    mark = np.zeros(n, dtype=np.bool_)
    chosen = np.empty(n + 1, dtype=np.int64)
    nchosen = 1
    chosen[0] = source
    cur = source
    pair = np.empty(2, dtype=np.int64)
    triple = np.empty(3, dtype=np.int64)
    ready = np.ones(2, dtype=np.bool_)
    while True:
        dist_t = hrows[slot[target]]
        if not _step1_any(trusted, rn, used, dist_t):
            break
        hrows, crows, ok = _with_rows_nb(indptr, indices, cost, hrows, crows, slot, cur, shared)
        if not ok:
            return chosen[:0].copy(), 2, hrows, crows, cur
        dist_c = hrows[slot[cur]]
        dist_t = hrows[slot[target]]
        r = _step1_relay(trusted, rn, used, dist_c, dist_t)
        if r < 0:
            break
        hrows, crows, ok = _with_rows_nb(indptr, indices, cost, hrows, crows, slot, r, shared)
        if not ok:
            return chosen[:0].copy(), 2, hrows, crows, r
        if cur == source and direct0 >= 0.0:
            direct, sh1 = direct0, shared0
        else:
            pair[0] = cur
            pair[1] = target
            lbs = np.empty((1, n))
            lbs[0] = crows[slot[target]]
            nodes, starts, seg = round_robin_lb_nb(indptr, indices, edge_of, cost, trusted, rn.copy(), rl.copy(), pair, 2,
                                                   lbs, ready)
            direct, sh1 = product_security_nb(nodes, starts, seg, pair, p, mark)
        triple[0] = cur
        triple[1] = r
        triple[2] = target
        lbs = np.empty((2, n))
        lbs[0] = crows[slot[r]]
        lbs[1] = crows[slot[target]]
        nodes, starts, seg = round_robin_lb_nb(indptr, indices, edge_of, cost, trusted, rn.copy(), rl.copy(), triple, 2,
                                               lbs, ready)
        segmented, sh2 = product_security_nb(nodes, starts, seg, triple, p, mark)
        if sh1 or sh2:
            return chosen[:0].copy(), 0, hrows, crows, -1
        if segmented > direct + margin:
            chosen[nchosen] = r
            nchosen += 1
            used[r] = True
            cur = r
        else:
            break
    chosen[nchosen] = target
    nchosen += 1
    return chosen[:nchosen].copy(), 1, hrows, crows, -1


@_jit
def _beats_nb(f1, h1, s1, f2, h2, s2, margin):
    """:func:`qkdseg.routing.smr_exact._beats` on ``(flag, -hops, security)``."""
    if f1 != f2:
        return f1 > f2
    if h1 != h2:
        return h1 > h2
    return s1 > s2 + margin


@_jit
def _met_nb(flag, negh):
    """:func:`qkdseg.routing.level_successive._met_hops` of one value (inf: not met)."""
    return float(-negh) if flag == 1 else np.inf


@_jit
def _ordered_chains_nb(m):
    """Every ordered chain of ``1..m`` of ``m`` items as ``itertools.permutations`` lists them,
    by length: rows of indices (``-1`` padded) and their lengths."""
    total = 0
    c = 1
    for k in range(1, m + 1):
        c *= m - k + 1
        total += c
    out = np.full((total, max(m, 1)), -1, dtype=np.int64)
    lens = np.empty(total, dtype=np.int64)
    row = 0
    for k in range(1, m + 1):
        idx = np.full(k, -1, dtype=np.int64)
        used = np.zeros(m, dtype=np.bool_)
        depth = 0
        while depth >= 0:
            if idx[depth] >= 0:
                used[idx[depth]] = False
            nxt = idx[depth] + 1
            while nxt < m and used[nxt]:
                nxt += 1
            if nxt >= m:
                idx[depth] = -1
                depth -= 1
                continue
            idx[depth] = nxt
            used[nxt] = True
            if depth == k - 1:
                out[row, :k] = idx
                lens[row] = k
                row += 1
            else:
                depth += 1
    return out, lens


@_jit
def _candidates_nb(trusted, rn, hs, ht, cap):
    """:func:`qkdseg.routing.smr_exact.candidate_relays` from the rows of the source (``hs``) and the
    target (``ht``): the trusted relays not masked with a finite ``hs + ht``, by that then index,
    the first ``cap`` (all: ``cap < 0``)."""
    idx = np.empty(trusted.size, dtype=np.int64)
    c = 0
    for v in range(trusted.size):
        if trusted[v] and not rn[v] and np.isfinite(hs[v] + ht[v]):
            idx[c] = v
            c += 1
    score = np.empty(c)
    for i in range(c):
        score[i] = hs[idx[i]] + ht[idx[i]]
    order = idx[:c][np.argsort(score, kind="mergesort")]
    if 0 <= cap < c:
        return order[:cap].copy()
    return order


@_jit
def _exhaustive_nb(m, limit):
    """``qkdseg.routing.smr_exact.ordered_chains(m) <= limit`` without overflow (``limit >= 0``)."""
    total = 1
    c = 1
    if total > limit:
        return False
    for j in range(1, m + 1):
        f = m - j + 1
        if c > limit // f:
            return False
        c *= f
        if c > limit - total:
            return False
        total += c
    return True


@_jit
def level_successive_nb(indptr, indices, edge_of, cost, p, trusted, rn, rl, s, t, cap, limit, hrows, crows, slot, shared,
                        max_paths, eps, tol, margin):
    """``smr-level``'s successive search in one call (:func:`qkdseg.routing.level_successive.successive`,
    the same decisions): the candidates (:func:`_candidates_nb`, at most ``cap``), chain ``()``,
    SMR's step-1 chain unless :meth:`paper_out_of_reach`, then every ordered chain of the
    candidates (at most ``limit`` of them: :func:`_exhaustive_nb`) or the greedy insertion, each
    value bounded as there. ``hrows``/``crows``: hop and cost rows (node ``v``'s at ``slot[v]``): a
    request's, where a node without rows gets them here (``slot`` is modified), or the network's
    (``shared``), where the caller must add them (status 2).

    Returns ``(status, candidates, chain, flag, nodes, starts, seg, masks, hops, security, full
    security, shared, chosen security, shared, node)`` of the chain chosen: its full route as
    :func:`level_chain_nb` gives it and, when ``flag`` is 1, its cheapest subsets, and
    :func:`_route_securities_nb` of them; status 1, 0 when a chain or step 1 needs the exact
    evaluator (the caller searches in Python), 2 when ``node`` needs rows."""
    none = np.empty(0, dtype=np.int64)
    cands = _candidates_nb(trusted, rn, hrows[slot[s]], hrows[slot[t]], cap)
    for v in cands:
        hrows, crows, ok = _with_rows_nb(indptr, indices, cost, hrows, crows, slot, v, shared)
        if not ok:
            return 2, cands, none, 0, none, none, none, none, 0, 0.0, 0.0, False, 0.0, False, v
    exhaustive = _exhaustive_nb(cands.size, limit)
    n = indptr.size - 1
    need = eps - tol - 1e-9
    slack = n * 2.0 ** -32 + 1e-9
    bound = np.inf
    # chain ()
    f0, h0, s0, st, nodes, starts, seg, masks = _level_value_nb(
        indptr, indices, edge_of, cost, p, trusted, rn, rl, hrows, crows, slot, s, t, none, np.inf, bound, max_paths, eps,
        tol, need, slack)
    if st == 2:
        return 0, cands, none, 0, none, none, none, none, 0, 0.0, 0.0, False, 0.0, False, -1
    if f0 == 1:
        bound = min(bound, float(-h0))
    bc, bf, bh, bs = none, f0, h0, s0
    bn, bst, bsg, bm = nodes, starts, seg, masks
    # SMR's step-1 chain, unless it would surely not be routed
    paper = none
    pf, ph, ps_ = 0, 0, -1.0
    pn, pst, psg, pm = none, none, none, none
    met0 = _met_nb(f0, h0)
    out_of_reach = False
    if met0 < np.inf:
        r = -1
        best_score = np.inf
        hs, ht = hrows[slot[s]], hrows[slot[t]]
        for v in range(n):
            if trusted[v] and not rn[v]:
                sc = hs[v] + ht[v]
                if np.isfinite(sc) and sc < best_score:
                    best_score = sc
                    r = v
        if r < 0 or (need > 0.0 and p[r] <= need):
            out_of_reach = True
        elif slot[r] >= 0:
            x = need / p[r] if need > 0.0 else 0.0
            first = _segment_bound_nb(indptr, indices, edge_of, cost, rn, rl, hs, hrows[slot[r]], crows[slot[r]], s, r,
                                      x, slack)
            out_of_reach = first + hrows[slot[r], t] > met0
    if not out_of_reach:
        direct = (-1.0, False)  # chain ()'s first two paths are step 1's direct pair (same searches)
        if max_paths < 0 or max_paths >= 2:
            first = min(2, seg.size)
            pair = np.array([s, t], dtype=np.int64)
            direct = product_security_nb(nodes, starts[:first + 1], seg[:first], pair, p, np.zeros(n, dtype=np.bool_))
        chosen, st, hrows, crows, missing = _select_rows_nb(indptr, indices, edge_of, cost, p, trusted, rn, rl, s, t, margin,
                                                            hrows, crows, slot, shared, direct[0], direct[1])
        if st != 1:
            return st, cands, none, 0, none, none, none, none, 0, 0.0, 0.0, False, 0.0, False, missing
        paper = chosen[1:chosen.size - 1].copy()
        if paper.size > 0:
            pf, ph, ps_, st, pn, pst, psg, pm = _level_value_nb(
                indptr, indices, edge_of, cost, p, trusted, rn, rl, hrows, crows, slot, s, t, paper, met0, bound,
                max_paths, eps, tol, need, slack)
            if st == 2:
                return 0, cands, none, 0, none, none, none, none, 0, 0.0, 0.0, False, 0.0, False, -1
            if pf == 1:
                bound = min(bound, float(-ph))
            if _beats_nb(pf, ph, ps_, bf, bh, bs, margin):
                bc, bf, bh, bs = paper, pf, ph, ps_
                bn, bst, bsg, bm = pn, pst, psg, pm
    m = cands.size
    if exhaustive:
        rows_, lens = _ordered_chains_nb(m)
        legs = np.empty(lens.size)
        for i in range(lens.size):
            prev = s
            total = 0.0
            for j in range(lens[i] + 1):
                nxt = cands[rows_[i, j]] if j < lens[i] else t
                total += hrows[slot[prev], nxt]
                prev = nxt
            legs[i] = total
        for i in np.argsort(legs, kind="mergesort"):
            chain = cands[rows_[i, :lens[i]]]
            if paper.size > 0 and _same_path(chain, paper):
                cf, ch, cs, st, cn, cst, csg, cm = pf, ph, ps_, 1, pn, pst, psg, pm
            else:
                cf, ch, cs, st, cn, cst, csg, cm = _level_value_nb(
                    indptr, indices, edge_of, cost, p, trusted, rn, rl, hrows, crows, slot, s, t, chain, _met_nb(bf, bh),
                    bound, max_paths, eps, tol, need, slack)
                if st == 2:
                    return 0, cands, none, 0, none, none, none, none, 0, 0.0, 0.0, False, 0.0, False, -1
                if cf == 1:
                    bound = min(bound, float(-ch))
            if _beats_nb(cf, ch, cs, bf, bh, bs, margin):
                bc, bf, bh, bs = chain, cf, ch, cs
                bn, bst, bsg, bm = cn, cst, csg, cm
    else:  # greedy insertion from chain () (smr_exact's, each trial bounded as in level_successive._greedy)
        gc, gf, gh, gs = none, f0, h0, s0
        gn, gst, gsg, gm = nodes, starts, seg, masks
        while True:
            ntr = 0
            trials = np.empty((m, gc.size + 1), dtype=np.int64)
            for r in cands:
                inside = False
                for v in gc:
                    if v == r:
                        inside = True
                if inside:
                    continue
                pos = 0
                bestd = 0.0
                for j in range(gc.size + 1):
                    a_ = s if j == 0 else gc[j - 1]
                    b_ = gc[j] if j < gc.size else t
                    d = hrows[slot[a_], r] + hrows[slot[b_], r] - hrows[slot[a_], b_]
                    if j == 0 or d < bestd:
                        pos, bestd = j, d
                trials[ntr, :pos] = gc[:pos]
                trials[ntr, pos] = r
                trials[ntr, pos + 1:] = gc[pos:]
                ntr += 1
            if ntr == 0:
                break
            lower = np.empty(ntr)
            for i in range(ntr):
                lower[i] = _fewest_hops_nb(indptr, indices, edge_of, cost, p, rn, rl, hrows, crows, slot, s, t, trials[i],
                                           need, slack)
            tf = np.zeros(ntr, dtype=np.int64)
            th = np.zeros(ntr, dtype=np.int64)
            ts = np.full(ntr, -1.0)
            routes = [(none, none, none, none) for _ in range(ntr)]
            met = _met_nb(gf, gh)
            for i in np.argsort(lower, kind="mergesort"):
                trial = trials[i]
                if paper.size > 0 and _same_path(trial, paper):
                    tf[i], th[i], ts[i] = pf, ph, ps_
                    routes[i] = (pn, pst, psg, pm)
                else:
                    cf, ch, cs, st, cn, cst, csg, cm = _level_value_nb(
                        indptr, indices, edge_of, cost, p, trusted, rn, rl, hrows, crows, slot, s, t, trial, met, bound,
                        max_paths, eps, tol, need, slack)
                    if st == 2:
                        return 0, cands, none, 0, none, none, none, none, 0, 0.0, 0.0, False, 0.0, False, -1
                    if cf == 1:
                        bound = min(bound, float(-ch))
                    tf[i], th[i], ts[i] = cf, ch, cs
                    routes[i] = (cn, cst, csg, cm)
                h = _met_nb(tf[i], th[i])
                if h < met:
                    met = h
            bi = -1
            for i in range(ntr):
                if bi < 0 or _beats_nb(tf[i], th[i], ts[i], tf[bi], th[bi], ts[bi], margin):
                    bi = i
            if not _beats_nb(tf[bi], th[bi], ts[bi], gf, gh, gs, margin):
                break
            gc, gf, gh, gs = trials[bi].copy(), tf[bi], th[bi], ts[bi]
            gn, gst, gsg, gm = routes[bi]
        if _beats_nb(gf, gh, gs, bf, bh, bs, margin):
            bc, bf, bh, bs = gc, gf, gh, gs
            bn, bst, bsg, bm = gn, gst, gsg, gm
    full, full_shared, sec, sub_shared = _route_securities_nb(p, s, t, bc, bf, bn, bst, bsg, bm)
    return 1, cands, bc, bf, bn, bst, bsg, bm, -bh, bs, full, full_shared, sec, sub_shared, -1


@_jit
def _put_path(nodes, starts, m, src, lo, hi):
    """Write ``src[lo:hi]`` as path ``m`` of the flat ``(nodes, starts)``; returns ``m + 1``."""
    nodes[starts[m]:starts[m] + hi - lo] = src[lo:hi]
    starts[m + 1] = starts[m] + hi - lo
    return m + 1


@_jit
def _route_securities_nb(p, s, t, chain, flag, nodes, starts, seg, masks):
    """``(security, shared)`` (:func:`product_security_nb`, the arithmetic of
    :func:`qkdseg.security.route_security` without shared relays) of a chain's full route and,
    when ``flag`` is 1, of the paths its ``masks`` pick (else ``(0.0, False)``)."""
    seg_nodes = np.empty(chain.size + 2, dtype=np.int64)
    seg_nodes[0] = s
    seg_nodes[1:chain.size + 1] = chain
    seg_nodes[chain.size + 1] = t
    mark = np.zeros(p.size, dtype=np.bool_)
    full, full_shared = product_security_nb(nodes, starts, seg, seg_nodes, p, mark)
    if flag != 1:
        return full, full_shared, 0.0, False
    seen = np.zeros(chain.size + 1, dtype=np.int64)
    pick = np.zeros(seg.size, dtype=np.bool_)
    count = 0
    size = 0
    for i in range(seg.size):
        if masks[seg[i]] >> seen[seg[i]] & 1:
            pick[i] = True
            count += 1
            size += starts[i + 1] - starts[i]
        seen[seg[i]] += 1
    sub = np.empty(size, dtype=np.int64)
    sub_starts = np.zeros(count + 1, dtype=np.int64)
    sub_seg = np.empty(count, dtype=np.int64)
    c = 0
    for i in range(seg.size):
        if pick[i]:
            sub_seg[c] = seg[i]
            c = _put_path(sub, sub_starts, c, nodes, starts[i], starts[i + 1])
    sec, shared = product_security_nb(sub, sub_starts, sub_seg, seg_nodes, p, mark)
    return full, full_shared, sec, shared


#: Kinds of the wide search's heap entries (as in routing/level_wide.py).
_DONE, _PENDING, _LABEL = 0, 1, 2
#: Most candidate paths of one segment in the wide search (routing/level_wide.py).
MAX_UNION = 16


# -- smr-level's wide search in one call (routing/level_wide.py) --------------------------------
# The segments' candidates are kept per network in an arena: ``table`` (open addressing; rows
# ``(u, v, k, links id, kind, offset)``, offset -1: empty), ``ipool``/``fpool`` (int and float
# records), ``cnt`` (ints used, floats used, keys). A record at ``e``: ``m``, front size (-1: not
# computed), front's int offset, front's float offset, ``m + 1`` path offsets, the nodes.
@_jit
def _slot_of(table, u, v, k, links, kind):
    mask = table.shape[0] - 1
    h = (((u * 1000003) ^ v) * 1000003 ^ (k * 31 + kind)) * 1000003 ^ links
    i = (h ^ (h >> 29)) & mask
    while True:
        if table[i, 5] < 0:
            return i, False
        if table[i, 0] == u and table[i, 1] == v and table[i, 2] == k and table[i, 3] == links and table[i, 4] == kind:
            return i, True
        i = (i + 1) & mask


@_jit
def _arena_get(table, u, v, k, links, kind):
    i, found = _slot_of(table, u, v, k, links, kind)
    return table[i, 5] if found else -1


@_jit
def _arena_put(table, cnt, u, v, k, links, kind, offset):
    """Index ``offset`` under the key; returns the table (a larger copy when it was half full)."""
    if 2 * (cnt[2] + 1) > table.shape[0]:
        grown = np.full((2 * table.shape[0], 6), -1, dtype=np.int64)
        for i in range(table.shape[0]):
            if table[i, 5] >= 0:
                j, _ = _slot_of(grown, table[i, 0], table[i, 1], table[i, 2], table[i, 3], table[i, 4])
                grown[j] = table[i]
        table = grown
    i, found = _slot_of(table, u, v, k, links, kind)
    if not found:
        cnt[2] += 1
    table[i, 0], table[i, 1], table[i, 2], table[i, 3], table[i, 4], table[i, 5] = u, v, k, links, kind, offset
    return table


@_jit
def _grow_int(pool, need):
    if need <= pool.size:
        return pool
    grown = np.empty(max(2 * pool.size, need), dtype=pool.dtype)
    grown[:pool.size] = pool
    return grown


@_jit
def _arena_store(ipool, cnt, nodes, starts):
    """Append a record of the paths ``(nodes, starts)``; returns ``(ipool, offset)``."""
    m = starts.size - 1
    e = cnt[0]
    ipool = _grow_int(ipool, e + 4 + m + 1 + nodes.size)
    ipool[e] = m
    ipool[e + 1] = -1
    ipool[e + 2] = 0
    ipool[e + 3] = 0
    base = e + 4 + m + 1
    for i in range(m + 1):
        ipool[e + 4 + i] = base + starts[i]
    ipool[base:base + nodes.size] = nodes
    cnt[0] = base + nodes.size
    return ipool, e


@_jit
def _arena_paths(ipool, e):
    m = ipool[e]
    lo = ipool[e + 4]
    hi = ipool[e + 4 + m]
    starts = np.empty(m + 1, dtype=np.int64)
    for i in range(m + 1):
        starts[i] = ipool[e + 4 + i] - lo
    return ipool[lo:hi].copy(), starts


@_jit
def _same_path_at(n1, s1, i, n2, s2, j):
    if s1[i + 1] - s1[i] != s2[j + 1] - s2[j]:
        return False
    for t in range(s1[i + 1] - s1[i]):
        if n1[s1[i] + t] != n2[s2[j] + t]:
            return False
    return True


@_jit
def _path_in(n1, s1, upto, n2, s2, j):
    for i in range(upto):
        if _same_path_at(n1, s1, i, n2, s2, j):
            return True
    return False


@_jit
def _union_paths(n1, s1, n2, s2, pick1, pick2, limit2):
    """The paths ``pick1`` of the first list, then those ``pick2`` of the second that are not among
    them (at most ``limit2``): ``level_paths.segment_candidates``' and ``_Segments._get``'s merge."""
    size = 0
    for i in pick1:
        size += s1[i + 1] - s1[i]
    for j in pick2:
        size += s2[j + 1] - s2[j]
    nodes = np.empty(size, dtype=np.int64)
    starts = np.zeros(pick1.size + pick2.size + 1, dtype=np.int64)
    m = 0
    for i in pick1:
        m = _put_path(nodes, starts, m, n1, s1[i], s1[i + 1])
    first = m
    for j in pick2:
        if m - first >= limit2:
            break
        if not _path_in(nodes, starts, first, n2, s2, j):
            m = _put_path(nodes, starts, m, n2, s2[j], s2[j + 1])
    return nodes[:starts[m]].copy(), starts[:m + 1].copy()


@_jit
def _front_nb(p, nodes, starts, mark):
    """``level_paths.subset_front``: the risky relays grouped by the set of paths they are on
    (first seen first, each group's ``p`` multiplied in that order), then :func:`subset_front_nb`.
    ``mark`` (length n, all -1) is restored."""
    m = starts.size - 1
    relays = np.empty(nodes.size, dtype=np.int64)
    on = np.zeros(nodes.size, dtype=np.int64)
    nr = 0
    for i in range(m):
        for q in range(starts[i] + 1, starts[i + 1] - 1):
            x = nodes[q]
            if p[x] < 1.0:
                if mark[x] < 0:
                    mark[x] = nr
                    relays[nr] = x
                    nr += 1
                on[mark[x]] |= 1 << i
    gmask = np.empty(nr, dtype=np.int64)
    gprob = np.empty(nr)
    ng = 0
    for r in range(nr):
        g = 0
        while g < ng and gmask[g] != on[r]:
            g += 1
        if g == ng:
            gmask[g] = on[r]
            gprob[g] = 1.0
            ng += 1
        gprob[g] = gprob[g] * p[relays[r]]
        mark[relays[r]] = -1
    hops = np.empty(m, dtype=np.int64)
    for i in range(m):
        hops[i] = starts[i + 1] - starts[i] - 1
    return subset_front_nb(m, gmask[:ng].copy(), gprob[:ng].copy(), hops)


@_jit
def _least_nb(indptr, indices, edge_of, cost, rn, rl, u, v, k, by_hops, hrow_v, crow_v):
    """``level_paths.least_paths`` (numba)."""
    return yen_nb(indptr, indices, edge_of, cost, rn.copy(), rl.copy(), u, v, k, by_hops, hrow_v if by_hops else crow_v)


@_jit
def _crosses(nodes, starts, s, t):
    for i in range(starts.size - 1):
        for q in range(starts[i] + 1, starts[i + 1] - 1):
            if nodes[q] == s or nodes[q] == t:
                return True
    return False


@_jit
def _avoiding_picks(nodes, starts, s, t, k, listed):
    """The first ``k`` paths avoiding ``s`` and ``t``; ``ok`` False when fewer and more may exist."""
    m = starts.size - 1
    out = np.empty(min(k, m), dtype=np.int64)
    c = 0
    for i in range(m):
        if c == k:
            break
        clear = True
        for q in range(starts[i] + 1, starts[i + 1] - 1):
            if nodes[q] == s or nodes[q] == t:
                clear = False
                break
        if clear:
            out[c] = i
            c += 1
    return out[:c].copy(), not (c < k and m == listed)


@_jit
def _segment_nb(indptr, indices, edge_of, cost, p, rn, rl, s, t, u, v, k, links, hrow_v, crow_v, table, ipool, fpool,
                cnt, xn, xs, mark):
    """The candidates of segment ``(u, v)`` and their front (``level_wide._Segments``): kept ones
    from the arena (computed and kept when missing), those avoiding the request's ends when they
    cross one, then the full route's paths ``(xn, xs)`` added. Returns ``(nodes, starts, fh, fs, fm,
    table, ipool, fpool)``."""
    free = np.zeros(indptr.size - 1, dtype=np.bool_)
    e = _arena_get(table, u, v, k, links, 0)
    if e < 0:
        n1, s1 = _least_nb(indptr, indices, edge_of, cost, free, rl, u, v, k, True, hrow_v, crow_v)
        n2, s2 = _least_nb(indptr, indices, edge_of, cost, free, rl, u, v, k, False, hrow_v, crow_v)
        nodes, starts = _union_paths(n1, s1, n2, s2, np.arange(s1.size - 1), np.arange(s2.size - 1), s2.size)
        ipool, e = _arena_store(ipool, cnt, nodes, starts)
        table = _arena_put(table, cnt, u, v, k, links, 0, e)
    nodes, starts = _arena_paths(ipool, e)
    kept = True
    if _crosses(nodes, starts, s, t):
        kept = False
        lists = []
        for kind in (1, 2):
            el = _arena_get(table, u, v, k, links, kind)
            if el < 0:
                ln, ls = _least_nb(indptr, indices, edge_of, cost, free, rl, u, v, 2 * k, kind == 1, hrow_v, crow_v)
                ipool, el = _arena_store(ipool, cnt, ln, ls)
                table = _arena_put(table, cnt, u, v, k, links, kind, el)
            lists.append(el)
        n1, s1 = _arena_paths(ipool, lists[0])
        n2, s2 = _arena_paths(ipool, lists[1])
        pick1, ok1 = _avoiding_picks(n1, s1, s, t, k, 2 * k)
        pick2, ok2 = _avoiding_picks(n2, s2, s, t, k, 2 * k)
        if ok1 and ok2:
            nodes, starts = _union_paths(n1, s1, n2, s2, pick1, pick2, pick2.size)
        else:
            n1, s1 = _least_nb(indptr, indices, edge_of, cost, rn, rl, u, v, k, True, hrow_v, crow_v)
            n2, s2 = _least_nb(indptr, indices, edge_of, cost, rn, rl, u, v, k, False, hrow_v, crow_v)
            nodes, starts = _union_paths(n1, s1, n2, s2, np.arange(s1.size - 1), np.arange(s2.size - 1), s2.size)
    if xs.size > 1:
        m = starts.size - 1
        more = np.empty(xs.size - 1, dtype=np.int64)
        c = 0
        for j in range(xs.size - 1):
            if not _path_in(nodes, starts, m, xn, xs, j):
                more[c] = j
                c += 1
        more = more[:c].copy()
        if more.size > 0 and MAX_UNION - m > 0:
            nodes, starts = _union_paths(nodes, starts, xn, xs, np.arange(m), more, MAX_UNION - m)
            kept = kept and starts.size - 1 == m
    if kept:
        nf = ipool[e + 1]
        if nf < 0:
            fh, fs, fm = _front_nb(p, nodes, starts, mark)
            io = cnt[0]
            ipool = _grow_int(ipool, io + 2 * fh.size)
            ipool[io:io + fh.size] = fh
            ipool[io + fh.size:io + 2 * fh.size] = fm
            cnt[0] = io + 2 * fh.size
            fo = cnt[1]
            fpool = _grow_int(fpool, fo + fs.size)
            fpool[fo:fo + fs.size] = fs
            cnt[1] = fo + fs.size
            ipool[e + 1], ipool[e + 2], ipool[e + 3] = fh.size, io, fo
            return nodes, starts, fh, fs, fm, table, ipool, fpool
        io, fo = ipool[e + 2], ipool[e + 3]
        return (nodes, starts, ipool[io:io + nf].copy(), fpool[fo:fo + nf].copy(), ipool[io + nf:io + 2 * nf].copy(),
                table, ipool, fpool)
    fh, fs, fm = _front_nb(p, nodes, starts, mark)
    return nodes, starts, fh, fs, fm, table, ipool, fpool


@_jit
def _gather_segment(nodes, starts, seg, j):
    """The paths of segment ``j`` (``j < 0``: none) of a flat route, in order."""
    size = 0
    count = 0
    for q in range(seg.size):
        if seg[q] == j:
            size += starts[q + 1] - starts[q]
            count += 1
    out = np.empty(size, dtype=np.int64)
    out_starts = np.zeros(count + 1, dtype=np.int64)
    c = 0
    for q in range(seg.size):
        if seg[q] == j:
            c = _put_path(out, out_starts, c, nodes, starts[q], starts[q + 1])
    return out, out_starts


@_jit
def _first_hops_nb(indptr, indices, edge_of, cost, p, rn, rl, row_b, a, b, x):
    """A lower bound on the hops of every set of ``a -> b`` paths whose union is at least ``x``
    secure (candidates of the wide search: relays not masked and of finite cost, links not
    removed). The paths through ``w`` distinct neighbours of ``a`` have at least ``sum (1 + hops(w,
    b))`` hops, and their union is at most ``1 - prod (1 - p(w))`` secure (Harris: some path
    through ``w`` intact needs ``w`` safe; ``p = 1`` for ``b``), so at least the fewest of the most
    secure neighbours that reach ``x`` are used (inf: none do)."""
    deg = indptr[a + 1] - indptr[a]
    hs = np.empty(deg)
    qs = np.empty(deg)
    c = 0
    for e in range(indptr[a], indptr[a + 1]):
        w = indices[e]
        if rl[edge_of[e]]:
            continue
        if w != b and (rn[w] or cost[w] == np.inf):
            continue
        hs[c] = 1.0 + row_b[w]
        qs[c] = 1.0 if w == b else p[w]
        c += 1
    if c == 0:
        return np.inf
    qs = -np.sort(-qs[:c])
    miss = 1.0
    used = 0
    while used < c:
        miss *= 1.0 - qs[used]
        used += 1
        if 1.0 - miss >= x - 1e-9:
            break
    if 1.0 - miss < x - 1e-9:
        return np.inf
    hs = np.sort(hs[:c])
    total = 0.0
    for i in range(used):
        total += hs[i]
    return total


@_jit
def level_wide_nb(indptr, indices, edge_of, cost, p, rn, rl, s, t, relays, hrows, crows, slot, eps, tol, k, below,
                  xchain, xnodes, xstarts, xseg, table, ipool, fpool, cnt, links):
    """``level_wide.wide_search`` in one call, the same order of the heap (so the same route):
    the least route of the wide space with fewer than ``below`` hops that meets ``eps``.
    ``hrows``/``crows``: hop and cost rows of ``s``, ``t`` and ``relays`` (at ``slot``);
    ``xchain``/``(xnodes, xstarts, xseg)``: the successive search's chain and its full route (the
    extra candidates of its segments); the arena (``table``, ``ipool``, ``fpool``, ``cnt``, rows
    kept per network under the removed links' id ``links``) is read and grown.

    Returns ``(found, chain, nodes, starts, seg, hops, product, table, ipool, fpool)``."""
    n = indptr.size - 1
    m = relays.size
    max_relays = m
    need = eps - tol - 1e-9
    accept = eps - tol
    slack = n * 2.0 ** -32 + 1e-9
    # end i: relays[i] (i < m) or t (i == m); start j: s (j == 0) or relays[j - 1]
    pos = np.full(n, -1, dtype=np.int64)
    for i in range(m):
        pos[relays[i]] = i
    p_end = np.ones(m + 1)
    rest = np.zeros(m + 1)
    to_target = hrows[slot[t]]
    for i in range(m):
        p_end[i] = p[relays[i]]
        rest[i] = to_target[relays[i]]
    # the segment of the successive search's chain that each (start j, end i) is, if any
    xj = np.full((m + 1, m + 1), -1, dtype=np.int64)
    room = np.full((m + 1, m + 1), 2 * k, dtype=np.int64)
    for jseg in range(xchain.size + 1):
        x = s if jseg == 0 else xchain[jseg - 1]
        y = t if jseg == xchain.size else xchain[jseg]
        js = 0 if x == s else (pos[x] + 1 if pos[x] >= 0 else -1)
        ie = m if y == t else pos[y]
        if js < 0 or ie < 0:
            continue
        c = 0
        for q in range(xseg.size):
            if xseg[q] == jseg:
                c += 1
        xj[js, ie] = jseg
        room[js, ie] = min(MAX_UNION, 2 * k + c)
    mark = np.full(n, -1, dtype=np.int64)
    none = np.empty(0, dtype=np.int64)
    nonef = np.empty(0)
    have = np.zeros((m + 1, m + 1), dtype=np.bool_)
    segs = [(none, none, none, nonef, none) for _ in range((m + 1) * (m + 1))]
    # labels: node, relays so far, hops, product, parent, and the segment taken (start, end, subset)
    cap = 64
    lnode = np.empty(cap, dtype=np.int64)
    lnrel = np.empty(cap, dtype=np.int64)
    lhops = np.empty(cap, dtype=np.int64)
    lsig = np.empty(cap)
    lpar = np.empty(cap, dtype=np.int64)
    lu = np.empty(cap, dtype=np.int64)
    lv = np.empty(cap, dtype=np.int64)
    lmask = np.empty(cap, dtype=np.int64)
    nl = 1
    lnode[0], lnrel[0], lhops[0], lsig[0], lpar[0], lu[0], lv[0], lmask[0] = s, 0, 0, 1.0, -1, -1, -1, 0
    # pending segments: label, end, product
    pcap = 64
    plab = np.empty(pcap, dtype=np.int64)
    pend = np.empty(pcap, dtype=np.int64)
    psv = np.empty(pcap)
    npend = 0
    # undominated labels per relay
    kcap = 8
    kept = np.empty((m, kcap), dtype=np.int64)
    kcnt = np.zeros(m, dtype=np.int64)
    heap = [(0.0, 0.0, 0, 0, 0)]
    heap.pop()
    seq = 0
    stack = np.zeros(1, dtype=np.int64)
    stack[0] = 0
    nstack = 1
    found = -1
    while True:
        # expand the labels queued (the root first, then each label popped and still undominated)
        while nstack > 0:
            nstack -= 1
            lab = stack[nstack]
            u = lnode[lab]
            nrel = lnrel[lab]
            hops = lhops[lab]
            sig = lsig[lab]
            ju = 0 if u == s else pos[u] + 1
            for i in range(m + 1):
                if nrel >= max_relays and i < m:
                    continue
                v = relays[i] if i < m else t
                dh = hrows[slot[u], v]
                cst = crows[slot[u], v]
                if v == u or cst == np.inf or dh == np.inf:
                    continue
                sv = sig * p_end[i]
                j = 1
                x = 0.0
                if need > 0.0:
                    if sv <= 0.0 or need / sv > 1.0 + 1e-9:
                        continue
                    x = need / sv
                    pmax = min(1.0, math.exp(-cst + slack))
                    if x < 1.0 and pmax < 1.0:
                        jf = math.ceil(math.log1p(-x) / math.log1p(-pmax) - 1e-9)
                        if jf > room[ju, i]:
                            continue
                        j = max(1, int(jf))
                key = hops + j * dh + rest[i]
                if key < below and hops + max(
                        _first_hops_nb(indptr, indices, edge_of, cost, p, rn, rl, hrows[slot[v]], u, v, x),
                        _first_hops_nb(indptr, indices, edge_of, cost, p, rn, rl, hrows[slot[u]], v, u, x)) + rest[i] < below:
                    if npend == pcap:
                        pcap *= 2
                        plab = _grow_int(plab, pcap)
                        pend = _grow_int(pend, pcap)
                        psv = _grow_int(psv, pcap)
                    plab[npend], pend[npend], psv[npend] = lab, i, sv
                    heapq.heappush(heap, (key, -sv, seq, _PENDING, npend))
                    npend += 1
                    seq += 1
        if len(heap) == 0:
            break
        item = heapq.heappop(heap)
        kind = item[3]
        idx = item[4]
        if kind == _DONE:
            found = idx
            break
        if kind == _LABEL:
            v = lnode[idx]
            r = pos[v]
            alive = False
            for q in range(kcnt[r]):
                if kept[r, q] == idx:
                    alive = True
            if alive:
                stack = _grow_int(stack, nstack + 1)
                stack[nstack] = idx
                nstack += 1
            continue
        lab = plab[idx]
        i = pend[idx]
        sv = psv[idx]
        u = lnode[lab]
        nrel = lnrel[lab]
        hops = lhops[lab]
        ju = 0 if u == s else pos[u] + 1
        v = relays[i] if i < m else t
        g = ju * (m + 1) + i
        if not have[ju, i]:
            xn, xs = _gather_segment(xnodes, xstarts, xseg, xj[ju, i])
            nodes, starts, fh, fs, fm, table, ipool, fpool = _segment_nb(
                indptr, indices, edge_of, cost, p, rn, rl, s, t, u, v, k, links, hrows[slot[v]], crows[slot[v]],
                table, ipool, fpool, cnt, xn, xs, mark)
            segs[g] = (nodes, starts, fh, fs, fm)
            have[ju, i] = True
        _, _, fh, fs, fm = segs[g]
        left = 0.0 if v == t else to_target[v]
        for f in range(fh.size):
            total = hops + fh[f]
            if total + left >= below:
                break
            sig = sv * fs[f]
            if sig < accept:
                continue
            if nl == cap:
                cap *= 2
                lnode, lnrel, lhops = _grow_int(lnode, cap), _grow_int(lnrel, cap), _grow_int(lhops, cap)
                lsig, lpar, lu = _grow_int(lsig, cap), _grow_int(lpar, cap), _grow_int(lu, cap)
                lv, lmask = _grow_int(lv, cap), _grow_int(lmask, cap)
            new = nl
            lnode[new], lnrel[new], lhops[new], lsig[new] = v, nrel + (v != t), total, sig
            lpar[new], lu[new], lv[new], lmask[new] = lab, ju, i, fm[f]
            nl += 1
            if v == t:
                heapq.heappush(heap, (float(total), -sig, seq, _DONE, new))
                seq += 1
                continue
            # dominated at v (no more relays, no more hops, no lower product)?
            r = pos[v]
            dom = False
            for q in range(kcnt[r]):
                o = kept[r, q]
                if lnrel[o] <= lnrel[new] and lhops[o] <= total and lsig[o] >= sig:
                    dom = True
                    break
            if dom:
                continue
            c = 0
            for q in range(kcnt[r]):
                o = kept[r, q]
                if not (lnrel[new] <= lnrel[o] and total <= lhops[o] and sig >= lsig[o]):
                    kept[r, c] = o
                    c += 1
            if c == kept.shape[1]:
                grown = np.empty((m, 2 * kept.shape[1]), dtype=np.int64)
                grown[:, :kept.shape[1]] = kept
                kept = grown
            kept[r, c] = new
            kcnt[r] = c + 1
            heapq.heappush(heap, (total + left, -sig, seq, _LABEL, new))
            seq += 1
    if found < 0:
        return False, none, none, none, none, 0, 0.0, table, ipool, fpool
    # the route: the labels from the root to ``found``
    depth = 0
    x = found
    while lpar[x] >= 0:
        depth += 1
        x = lpar[x]
    order = np.empty(depth, dtype=np.int64)
    x = found
    for d in range(depth - 1, -1, -1):
        order[d] = x
        x = lpar[x]
    chain = np.empty(depth - 1, dtype=np.int64)
    size = 0
    npaths = 0
    for d in range(depth):
        x = order[d]
        if d > 0:
            chain[d - 1] = lnode[lpar[x]]
        nodes, starts, _, _, _ = segs[lu[x] * (m + 1) + lv[x]]
        for q in range(starts.size - 1):
            if lmask[x] >> q & 1:
                size += starts[q + 1] - starts[q]
                npaths += 1
    fnodes = np.empty(size, dtype=np.int64)
    fstarts = np.zeros(npaths + 1, dtype=np.int64)
    fseg = np.empty(npaths, dtype=np.int64)
    c = 0
    for d in range(depth):
        x = order[d]
        nodes, starts, _, _, _ = segs[lu[x] * (m + 1) + lv[x]]
        for q in range(starts.size - 1):
            if lmask[x] >> q & 1:
                fseg[c] = d
                c = _put_path(fnodes, fstarts, c, nodes, starts[q], starts[q + 1])
    return True, chain, fnodes, fstarts, fseg, lhops[found], lsig[found], table, ipool, fpool
