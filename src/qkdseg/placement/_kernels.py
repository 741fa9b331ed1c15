"""Compiled loops of the placement search (numba when installed).

Two batch kernels over the demands of a placement problem:

- :func:`eval_pairs_nb` routes demands with SMR exactly as
  :func:`qkdseg.routing.smr.smr` does (it calls the same compiled step 1 and
  step 2 of :mod:`qkdseg._kernels`) and returns their exact security. It is
  what a candidate placement is evaluated with.
- :func:`trace_pairs_nb` routes demands with an *instrumented* copy of SMR
  that also records, per demand, which untrusted nodes could change its
  route if they were made trusted (``rel``), which nodes' costs the record
  itself depends on (``touch``), and which trusted nodes could change it if
  they were made untrusted again (``relm``). docs/placement.md ("Incremental
  evaluation") proves the rules; ``tests/test_placement.py`` checks them
  against fresh routes.

The rules, for one ExDijkstra search ``a -> b`` that found a path of cost
``D`` (the sum of ``-log p`` over its relays) under masks ``rn, rl``: making
node ``v`` trusted sets its cost to 0, so it can change the search only if a
path through ``v`` with ``v`` free costs at most ``D``, i.e. only if
``dA(v) + dB(v) <= D`` where ``dA``/``dB`` are the least relay costs from
``a``/``b`` to ``v`` (``v`` itself not charged). SMR step 1 can change only
where ``v`` would become the argmin candidate; at the iteration where step 1
stopped, ``v`` would be tested and rejected unless an upper bound on the
two-path security through ``v`` beats the direct security.
"""

from __future__ import annotations

import math

import numpy as np

from .._kernels import (
    HAVE_NUMBA,
    _heap_pop,
    _heap_push,
    _jit,
    _lower_bounds,
    _search,
    _work,
    bfs_hops_nb,
    remove_path_nb,
    product_security_nb,
    route_security_nb,
    select_segment_nodes_nb,
)

if HAVE_NUMBA:  # pragma: no cover - depends on the environment
    import numba as _numba

    prange = _numba.prange

    def _jit_parallel(func):
        return _numba.njit(cache=True, nogil=True, parallel=True)(func)
else:  # pragma: no cover
    prange = range

    def _jit_parallel(func):
        return func

#: Slack (cost units, i.e. -log p) added to every "at most D" test: costs are
#: exact multiples of 2^-32, so this only makes the rule more conservative.
COST_SLACK = 1e-9
#: Slack (probability) of the step-1 bound test.
PROB_SLACK = 1e-9


@_jit
def _ball(indptr, indices, edge_of, cost, rn, rl, src, limit, dist, hop, done, hd, hh, hv):
    """Settle (``done``) every node whose least relay cost from ``src`` (the
    node itself not charged) is at most ``limit``; ``dist``/``hop`` hold the
    least ``(cost, hops)`` label, ordered lexicographically as ExDijkstra's.

    Walks leave only ``src`` and nodes that are not masked and have a finite
    cost; removed links are not used. ``dist`` must be inf, ``hop`` 0 and
    ``done`` False on entry (:func:`_reset`).
    """
    inf = np.inf
    dist[src] = 0.0
    size = _heap_push(hd, hh, hv, 0, 0.0, 0, src)
    while size > 0:
        u = hv[0]
        du = hd[0]
        hu = hh[0]
        size = _heap_pop(hd, hh, hv, size)
        if done[u]:
            continue
        if du > limit:
            break
        done[u] = True
        hop[u] = hu
        nd = du
        if u != src:
            if rn[u]:
                continue
            w = cost[u]
            if w == inf:
                continue
            nd = du + w
        if nd > limit:
            continue
        nh = hu + 1
        for k in range(indptr[u], indptr[u + 1]):
            if rl[edge_of[k]]:
                continue
            x = indices[k]
            if not done[x] and (nd < dist[x] or (nd == dist[x] and nh < hop[x])):
                dist[x] = nd
                hop[x] = nh
                size = _heap_push(hd, hh, hv, size, nd, nh, x)


@_jit
def _reset(dist, hop, done):
    for i in range(dist.size):
        dist[i] = np.inf
        hop[i] = 0
        done[i] = False


@_jit
def _mark_search(indptr, indices, edge_of, cost, rn, rl, a, b, d_cost, d_hops, cmax, rel, touch, W):
    """Record what one successful search ``a -> b`` depends on: its path has
    relay cost ``d_cost`` and ``d_hops`` hops.

    ``rel``: a node ``x`` can change the search only if the best
    ``(cost, hops)`` through ``x``, with ``x`` free, is at most
    ``(d_cost, d_hops)`` lexicographically (costs are exact multiples of
    2^-32, so the comparisons are exact). ``touch``: making ``x`` free can
    make another node ``y`` relevant only through a walk through both, so
    only if the cost through ``x`` is at most ``d_cost`` plus the largest
    cost ``cmax`` a candidate ``y`` can shed.
    """
    da, db, ha, hb, doa, dob, hd, hh, hv = W
    n = indptr.size - 1
    lim = d_cost + cmax + COST_SLACK
    _ball(indptr, indices, edge_of, cost, rn, rl, a, lim, da, ha, doa, hd, hh, hv)
    _ball(indptr, indices, edge_of, cost, rn, rl, b, lim, db, hb, dob, hd, hh, hv)
    for x in range(n):
        if doa[x] and dob[x] and x != a and x != b and not rn[x]:
            c = da[x] + db[x]
            if c <= lim:
                touch[x] = True
                if c < d_cost or (c == d_cost and ha[x] + hb[x] <= d_hops):
                    rel[x] = True
    _reset(da, ha, doa)
    _reset(db, hb, dob)


@_jit
def _rr_trace(indptr, indices, edge_of, cost, trusted, rn, rl, seg_nodes, max_paths, cmax, rel, relm, touch, W):
    """SMR step 2 (as :func:`qkdseg._kernels.round_robin_nb`, same searches
    in the same order), recording each search's dependencies. ``rn``/``rl``
    are modified (pass copies)."""
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
    lbs = np.zeros((max(nseg, 0), n))
    lb_ready = np.zeros(max(nseg, 0), dtype=np.bool_)
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
            d_cost = 0.0
            for i in range(1, length - 1):
                d_cost += cost[out[i]]
                relm[out[i]] = True
            _mark_search(indptr, indices, edge_of, cost, rn, rl, a, b, d_cost, length - 1, cmax, rel, touch, W)
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
            remove_path_nb(indptr, indices, edge_of, trusted, rn, rl, out, length)
            count[j] += 1
            if max_paths >= 0 and count[j] >= max_paths:
                active[j] = False
                n_active -= 1
    return nodes[:nnodes].copy(), starts[: npaths + 1].copy(), seg[:npaths].copy()


@_jit
def _two_path_ub_limit(threshold):
    """Cost ``L`` beyond which ``1 - (1 - exp(-x))^2 < threshold`` (inf when
    every cost can reach it, -1 when none can)."""
    if threshold <= 0.0:
        return np.inf
    if threshold >= 1.0:
        return -1.0
    return -math.log(1.0 - math.sqrt(1.0 - threshold))


@_jit
def _mark_step1_stop(indptr, indices, edge_of, cost, rn0, rl0, cur, target, direct, margin, capable, rel, touch, W):
    """Step 1 stopped at ``cur``: a ``capable`` node (one that would become
    the tested candidate) changes the outcome only if the bound on the
    two-path security through it exceeds ``direct + margin``."""
    da, db, ha, hb, doa, dob, hd, hh, hv = W
    n = indptr.size - 1
    thr = direct + margin - PROB_SLACK
    lim = _two_path_ub_limit(thr)
    # A capable node that fails the bound, once added, is tested and rejected
    # here: the route and this record stay valid (a superset), so it needs no
    # touch of its own.
    if lim < 0.0:
        return
    _ball(indptr, indices, edge_of, cost, rn0, rl0, cur, lim + COST_SLACK, da, ha, doa, hd, hh, hv)
    _ball(indptr, indices, edge_of, cost, rn0, rl0, target, lim + COST_SLACK, db, hb, dob, hd, hh, hv)
    for x in range(n):
        if doa[x] or dob[x]:
            touch[x] = True
        if capable[x] and doa[x] and dob[x]:
            ga = 1.0 - (1.0 - math.exp(-da[x])) ** 2
            gb = 1.0 - (1.0 - math.exp(-db[x])) ** 2
            if ga * gb > thr:
                rel[x] = True
    _reset(da, ha, doa)
    _reset(db, hb, dob)


@_jit
def _pair_trace(indptr, indices, edge_of, cost, p, trusted, rn, rl, seg_nodes, cmax, rel, relm, touch, W, mark):
    nodes, starts, seg = _rr_trace(indptr, indices, edge_of, cost, trusted, rn.copy(), rl.copy(), seg_nodes, 2, cmax, rel, relm, touch, W)
    return product_security_nb(nodes, starts, seg, seg_nodes, p, mark)


@_jit
def _smr_trace(indptr, indices, edge_of, cost, p, trusted, rl0, s, d, margin, cmax, rel, relm, touch, W, mark):
    """SMR on one demand (the decisions of :func:`select_segment_nodes_nb`
    and :func:`round_robin_nb`), recording its dependencies. Returns
    ``(security, ok)``; ``ok`` False: a shared risky relay, use the exact
    evaluator (and treat every node as relevant)."""
    n = indptr.size - 1
    inf = np.inf
    rn = np.zeros(n, dtype=np.bool_)
    rn[s] = True
    rn[d] = True
    dist_t = bfs_hops_nb(indptr, indices, d)
    used = np.zeros(n, dtype=np.bool_)
    used[s] = True
    used[d] = True
    capable = np.zeros(n, dtype=np.bool_)
    chosen = np.empty(n + 1, dtype=np.int64)
    nchosen = 1
    chosen[0] = s
    cur = s
    pair = np.empty(2, dtype=np.int64)
    triple = np.empty(3, dtype=np.int64)
    while True:
        dist_c = bfs_hops_nb(indptr, indices, cur)
        r = -1
        best = inf
        for v in range(n):
            if trusted[v] and not rn[v] and not used[v] and dist_t[v] != inf:
                sc = dist_c[v] + dist_t[v]
                if sc < best:
                    best = sc
                    r = v
        # untrusted nodes that, made trusted, would be this iteration's candidate
        for v in range(n):
            capable[v] = False
            if not trusted[v] and not rn[v] and dist_t[v] != inf:
                sc = dist_c[v] + dist_t[v]
                if sc != inf and (r < 0 or sc < best or (sc == best and v < r)):
                    capable[v] = True
        pair[0] = cur
        pair[1] = d
        direct, sh1 = _pair_trace(indptr, indices, edge_of, cost, p, trusted, rn, rl0, pair, cmax, rel, relm, touch, W, mark)
        if sh1:
            return 0.0, False
        if r < 0:
            _mark_step1_stop(indptr, indices, edge_of, cost, rn, rl0, cur, d, direct, margin, capable, rel, touch, W)
            break
        relm[r] = True
        triple[0] = cur
        triple[1] = r
        triple[2] = d
        segmented, sh2 = _pair_trace(indptr, indices, edge_of, cost, p, trusted, rn, rl0, triple, cmax, rel, relm, touch, W, mark)
        if sh2:
            return 0.0, False
        if segmented > direct + margin:
            for v in range(n):
                if capable[v]:
                    rel[v] = True
                    touch[v] = True
            chosen[nchosen] = r
            nchosen += 1
            used[r] = True
            cur = r
        else:
            _mark_step1_stop(indptr, indices, edge_of, cost, rn, rl0, cur, d, direct, margin, capable, rel, touch, W)
            break
    chosen[nchosen] = d
    nchosen += 1
    seg_nodes = chosen[:nchosen].copy()
    nodes, starts, seg = _rr_trace(indptr, indices, edge_of, cost, trusted, rn.copy(), rl0.copy(), seg_nodes, -1, cmax, rel, relm, touch, W)
    sec, sh = product_security_nb(nodes, starts, seg, seg_nodes, p, mark)
    if sh:
        return 0.0, False
    return sec, True


@_jit_parallel
def trace_pairs_nb(indptr, indices, edge_of, cost, p, trusted, rl0, srcs, dsts, rows, margin, cmax, sec, ok, rel, relm, touch):
    """:func:`_smr_trace` for the demands ``rows`` (in parallel threads);
    writes ``sec[i]``, ``ok[i]`` and rows ``i`` of ``rel``, ``relm``,
    ``touch`` (cleared first)."""
    n = indptr.size - 1
    cap = indices.size + 2
    for t in prange(rows.size):
        i = rows[t]
        W = (np.full(n, np.inf), np.full(n, np.inf), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64),
             np.zeros(n, dtype=np.bool_), np.zeros(n, dtype=np.bool_), np.empty(cap), np.empty(cap, dtype=np.int64),
             np.empty(cap, dtype=np.int64))
        mark = np.zeros(n, dtype=np.bool_)
        for v in range(n):
            rel[i, v] = False
            relm[i, v] = False
            touch[i, v] = False
        a, b = _smr_trace(indptr, indices, edge_of, cost, p, trusted, rl0, srcs[i], dsts[i], margin, cmax,
                          rel[i], relm[i], touch[i], W, mark)
        sec[i] = a
        ok[i] = b


@_jit_parallel
def eval_pairs_nb(indptr, indices, edge_of, cost, p, trusted, rl0, srcs, dsts, rows, margin):
    """Exact SMR security of the demands ``rows`` (the core's compiled SMR,
    in parallel threads). Returns ``(sec, ok)`` of length ``rows.size``;
    ``ok`` False: a shared risky relay, the caller evaluates that demand
    exactly instead."""
    n = indptr.size - 1
    out = np.zeros(rows.size)
    ok = np.ones(rows.size, dtype=np.bool_)
    for t in prange(rows.size):
        i = rows[t]
        s = srcs[i]
        d = dsts[i]
        mark = np.zeros(n, dtype=np.bool_)
        rn = np.zeros(n, dtype=np.bool_)
        rn[s] = True
        rn[d] = True
        chosen, good = select_segment_nodes_nb(indptr, indices, edge_of, cost, p, trusted, rn, rl0, s, d, margin)
        if good:
            sec, shared = route_security_nb(indptr, indices, edge_of, cost, p, trusted, rn, rl0, chosen, -1, mark)
            if shared:
                ok[t] = False
            else:
                out[t] = sec
        else:
            ok[t] = False
    return out, ok
