"""A straightforward networkx SMR: the baseline the benchmark compares against.

The same algorithm as :func:`qkdseg.routing.smr.smr` written the obvious
way: every search takes a ``networkx.restricted_view`` without the removed
nodes and links (a view, not a copy: copying the graph per search is another
10x slower) and runs ``networkx.dijkstra_path`` with a weight function charging the reached
node's ``-log p`` (the target is not charged); hop distances come from
``single_source_shortest_path_length``; the security of two paths is the
product formula (paths never share an untrusted relay). Ties are broken by
networkx, so paths may differ from qkdseg's where several are optimal.
"""

from __future__ import annotations

import math

import networkx as nx


def _search(g, cost, s, t, removed_nodes, removed_links):
    h = nx.restricted_view(g, [v for v in removed_nodes if v not in (s, t)], removed_links)

    def weight(u, v, d):
        if v == t:
            return 0.0
        c = cost[v]
        return None if c == math.inf else c

    try:
        return nx.dijkstra_path(h, s, t, weight=weight)
    except nx.NetworkXNoPath:
        return None


def _round_robin(g, cost, trusted, seg_nodes, max_paths, removed_nodes, removed_links):
    rn, rl = set(removed_nodes), set(removed_links)
    pairs = list(zip(seg_nodes, seg_nodes[1:]))
    paths = [[] for _ in pairs]
    active = [True] * len(pairs)
    while any(active):
        for j, (a, b) in enumerate(pairs):
            if not active[j]:
                continue
            path = _search(g, cost, a, b, rn, rl)
            if path is None:
                active[j] = False
                continue
            paths[j].append(path)
            rn.update(v for v in path[1:-1] if not trusted[v])
            rl.update(zip(path, path[1:]))
            if max_paths is not None and len(paths[j]) >= max_paths:
                active[j] = False
    return paths


def _security(p, paths, chain):
    total = 1.0
    for seg in paths:
        if not seg:
            return 0.0
        miss = 1.0
        for path in seg:
            miss *= 1.0 - math.prod(p[v] for v in path[1:-1])
        total *= 1.0 - miss
    return total * math.prod(p[v] for v in chain)


def nx_smr(g: nx.Graph, s, d, max_paths=None):
    """SMR on a networkx graph with node attributes ``trusted`` and ``p``."""
    p = dict(g.nodes(data="p"))
    trusted = dict(g.nodes(data="trusted"))
    cost = {v: (-math.log(x) if x > 0 else math.inf) for v, x in p.items()}
    rn = {s, d}
    dist_t = nx.single_source_shortest_path_length(g, d)
    used = {s, d}
    chosen = [s]
    cur = s
    while True:
        cand = [v for v in g if trusted[v] and v not in rn and v not in used and v in dist_t]
        if not cand:
            break
        dist_c = nx.single_source_shortest_path_length(g, cur)
        r = min(cand, key=lambda v: (dist_c.get(v, math.inf) + dist_t[v], v))
        direct = _security(p, _round_robin(g, cost, trusted, [cur, d], 2, rn, ()), [])
        seg = _security(p, _round_robin(g, cost, trusted, [cur, r, d], 2, rn, ()), [r])
        if seg > direct + 1e-12:
            chosen.append(r)
            used.add(r)
            cur = r
        else:
            break
    chosen.append(d)
    return chosen, _round_robin(g, cost, trusted, chosen, max_paths, rn, ())
