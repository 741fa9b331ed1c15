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
    inf = np.inf
    for i in range(n):
        lb[i] = inf
    settled = np.zeros(n, dtype=np.bool_)
    lb[target] = 0.0
    size = _heap_push(hd, hh, hv, 0, 0.0, 0, target)
    radius = inf
    while size > 0:
        x = hv[0]
        size = _heap_pop(hd, hh, hv, size)
        if settled[x]:
            continue
        settled[x] = True
        if x == source:
            radius = lb[x]
            break
        wx = 0.0
        if x != target:
            wx = cost[x]
            if wx == inf:
                continue  # an unusable node never relays: do not go through it
        hx = lb[x] + wx
        for k in range(indptr[x], indptr[x + 1]):
            y = indices[k]
            if not settled[y] and hx < lb[y]:
                lb[y] = hx
                size = _heap_push(hd, hh, hv, size, hx, 0, y)
    if radius == inf:  # source not reached: fall back to plain Dijkstra
        for i in range(n):
            lb[i] = 0.0
        return inf
    for i in range(n):
        if not settled[i]:
            lb[i] = radius
    return radius


# -- ExDijkstra --------------------------------------------------------------------
@_jit
def _search(indptr, indices, edge_of, cost, rn, rl, source, target, dist, hops, pred, done, touched, hd, hh, hv, out, lb):
    """One target-pruned ExDijkstra search; writes the path into ``out``.

    ``dist/hops/pred/done`` must be in their reset state (inf/0/-1/False) on
    entry; every entry this search changes is listed in ``touched`` and is
    reset before returning, so the work arrays can be reused. Returns the
    path length (0: no path).

    ``lb`` is a consistent lower bound on the cost still to come from each
    node to ``target`` (all zeros: plain Dijkstra; :func:`_lower_bounds`
    gives a tight one). The heap is ordered by ``(cost + lb, hops, node)``:
    with a consistent bound every optimal predecessor of a node is still
    settled before it, so the labels, the smallest-index predecessor rule
    and hence the path are exactly those of plain Dijkstra (A*).
    """
    if source != target and not _reachable(indptr, indices, edge_of, cost, rn, rl, source, target, pred, touched, out):
        return 0
    inf = np.inf
    nt = 0
    dist[source] = 0.0
    touched[nt] = source
    nt += 1
    size = _heap_push(hd, hh, hv, 0, lb[source], 0, source)
    found = False
    while size > 0:
        u = hv[0]
        size = _heap_pop(hd, hh, hv, size)
        if done[u]:
            continue
        done[u] = True
        if u == target:
            found = True
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
            if c < dv or (c == dv and (nh < hops[v] or (nh == hops[v] and u < pred[v]))):
                better = c < dv or nh < hops[v]
                if dv == inf and pred[v] == -1:
                    touched[nt] = v
                    nt += 1
                dist[v] = c
                hops[v] = nh
                pred[v] = u
                if better:
                    size = _heap_push(hd, hh, hv, size, c + lb[v], nh, v)
    length = 0
    if found:
        v = target
        while v != source:
            out[length] = v
            length += 1
            v = pred[v]
        out[length] = source
        length += 1
        # reverse in place
        i = 0
        j = length - 1
        while i < j:
            out[i], out[j] = out[j], out[i]
            i += 1
            j -= 1
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
def segment_bound_nb(indptr, indices, cost, source, target):
    """The A* bound of segment ``source -> target`` that :func:`round_robin_nb`
    computes (:func:`_lower_bounds`), and the least total cost of the relays
    strictly between them on the whole network (inf where no path has finite
    cost): ``exp(-radius)`` bounds the ``Psec`` of every path of the segment
    from above, whatever is removed later (``smr-level``'s chain bound).
    """
    n = indptr.size - 1
    cap = indices.size + 2
    hd = np.empty(cap)
    hh = np.empty(cap, dtype=np.int64)
    hv = np.empty(cap, dtype=np.int64)
    lb = np.empty(n)
    radius = _lower_bounds(indptr, indices, cost, source, target, lb, hd, hh, hv)
    return lb, radius


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
        anycand = False
        for v in range(n):
            if trusted[v] and not rn[v] and not used[v] and dist_t[v] != np.inf:
                anycand = True
                break
        if not anycand:
            break
        dist_c = bfs_hops_nb(indptr, indices, cur)
        r = -1
        best = np.inf
        for v in range(n):
            if trusted[v] and not rn[v] and not used[v] and dist_t[v] != np.inf:
                sc = dist_c[v] + dist_t[v]
                if sc < best:
                    best = sc
                    r = v
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
