"""An independent checker for segment selection (``smr-exact``, ``smr``'s
``verify``): networkx and numpy only, no qkdseg import.

Written from docs/model.md (sections 2, 3, 5 and refinements 1-2) and
docs/algorithms.md, by brute force wherever the code under test is clever:

- ExDijkstra by enumerating every simple path of the residual graph and
  taking the least ``(cost, hops, reversed node sequence)``: cost the sum of
  the relays' ``round(-log p * 2^32)`` (integers, so ties are exact), the
  end nodes uncharged; the reversed-sequence rule is "among the optimal
  predecessors of a node, the smallest index" applied from the target back.
- Step 2 (round robin with removals) exactly as docs/model.md section 3
  words it.
- Exact security by enumerating every compromise state of the risky relays
  involved (``2^k`` states, as a numpy array).

Graphs are networkx graphs whose nodes are ``0..n-1`` in index order, with
node attributes ``p`` and ``trusted``.
"""

from __future__ import annotations

import itertools
import math

import networkx as nx
import numpy as np

SCALE = 2**32


def node_cost(p: float) -> float:
    """Integer cost of a relay: ``round(-log p * 2^32)``; ``inf`` for p = 0."""
    return math.inf if p <= 0.0 else round(-math.log(p) * SCALE)


def best_path(g: nx.Graph, a, b, banned_nodes: set, banned_links: set):
    """The ExDijkstra path ``a -> b`` avoiding ``banned_nodes`` as relays and
    ``banned_links`` (frozensets), or None: brute force over simple paths."""
    h = nx.Graph()
    h.add_nodes_from(g.nodes)
    for u, v in g.edges:
        if frozenset((u, v)) in banned_links:
            continue
        ok_u = u in (a, b) or (u not in banned_nodes and g.nodes[u]["p"] > 0)
        ok_v = v in (a, b) or (v not in banned_nodes and g.nodes[v]["p"] > 0)
        if ok_u and ok_v:
            h.add_edge(u, v)
    best, best_key = None, None
    for path in nx.all_simple_paths(h, a, b):
        key = (sum(node_cost(g.nodes[v]["p"]) for v in path[1:-1]), len(path) - 1, tuple(reversed(path)))
        if best_key is None or key < best_key:
            best, best_key = list(path), key
    return best


def round_robin(g: nx.Graph, request: tuple, segment_nodes: list, max_paths: int | None = None) -> list[list[list]]:
    """Step 2: one path per segment per round, removing after each path its
    untrusted relays and its links for all segments; the request's own ends
    (``request = (s, d)``) never relay."""
    banned = set(request)
    links: set = set()
    pairs = list(zip(segment_nodes, segment_nodes[1:]))
    paths: list[list[list]] = [[] for _ in pairs]
    active = [True] * len(pairs)
    while any(active):
        for j, (a, b) in enumerate(pairs):
            if not active[j]:
                continue
            path = best_path(g, a, b, banned, links)
            if path is None:
                active[j] = False
                continue
            paths[j].append(path)
            banned.update(v for v in path[1:-1] if not g.nodes[v]["trusted"])
            links.update(frozenset(e) for e in zip(path, path[1:]))
            if max_paths is not None and len(paths[j]) >= max_paths:
                active[j] = False
    return paths


def exact_security(g: nx.Graph, segments: list[list[list]], chain: list) -> float:
    """Probability that every chain node is safe and every segment keeps a
    path with all relays safe: every state of the risky relays enumerated."""
    if not segments or any(len(seg) == 0 for seg in segments):
        return 0.0
    p = {v: g.nodes[v]["p"] for v in g.nodes}
    risky = sorted({v for seg in segments for path in seg for v in path[1:-1] if p[v] < 1.0} | {v for v in chain if p[v] < 1.0})
    k = len(risky)
    pos = {v: i for i, v in enumerate(risky)}
    safe = ((np.arange(2**k)[:, None] >> np.arange(k)[None, :]) & 1).astype(bool)  # states x relays
    probs = np.array([p[v] for v in risky])
    weight = np.prod(np.where(safe, probs, 1.0 - probs), axis=1) if k else np.ones(1)
    ok = np.ones(len(weight), dtype=bool)
    for v in chain:
        if v in pos:
            ok &= safe[:, pos[v]]
    for seg in segments:
        seg_ok = np.zeros(len(weight), dtype=bool)
        for path in seg:
            cols = [pos[v] for v in path[1:-1] if v in pos]
            seg_ok |= safe[:, cols].all(axis=1) if cols else True
        ok &= seg_ok
    return float(weight[ok].sum())


def chain_security(g: nx.Graph, s, d, chain: tuple, max_paths: int | None = None) -> float:
    """Exact security of the full step-2 route over ``[s, *chain, d]``."""
    nodes = [s, *chain, d]
    return exact_security(g, round_robin(g, (s, d), nodes, max_paths), list(chain))


def trusted_relays(g: nx.Graph, s, d) -> list:
    return [v for v in g.nodes if g.nodes[v]["trusted"] and v not in (s, d)]


def brute_force_best(g: nx.Graph, s, d, max_paths: int | None = None, max_len: int | None = None) -> tuple[float, tuple]:
    """The most secure chain over every ordered sequence of distinct trusted
    relays (the empty chain included; at most ``max_len`` long), and its
    security."""
    relays = trusted_relays(g, s, d)
    top = len(relays) if max_len is None else min(max_len, len(relays))
    best_sec, best_chain = -1.0, ()
    for k in range(top + 1):
        for chain in itertools.permutations(relays, k):
            sec = chain_security(g, s, d, chain, max_paths)
            if sec > best_sec + 1e-12:
                best_sec, best_chain = sec, chain
    return best_sec, best_chain


def detour_order(g: nx.Graph, s, d) -> list:
    """Trusted relays reachable from both ends, by ``hops(s, r) + hops(r, d)``
    then node order (docs/algorithms.md, smr-exact's candidate order)."""
    hs = nx.single_source_shortest_path_length(g, s)
    hd = nx.single_source_shortest_path_length(g, d)
    order = list(g.nodes)
    rel = [v for v in trusted_relays(g, s, d) if v in hs and v in hd]
    return sorted(rel, key=lambda v: (hs[v] + hd[v], order.index(v)))


def brute_force_cheapest(g: nx.Graph, s, d, eps: float, max_paths: int | None = None) -> tuple[int, float] | None:
    """``smr-level``'s optimum by brute force (issue 23): over every ordered chain of
    distinct trusted relays and every choice of a non-empty subset of each
    segment's step-2 paths (the full route's ExDijkstra paths, :func:`round_robin`),
    the fewest total hops whose exact security meets ``eps`` (up to 1e-12), and
    the highest exact security at those hops; ``None`` when nothing meets it."""
    best = None
    relays = trusted_relays(g, s, d)
    for k in range(len(relays) + 1):
        for chain in itertools.permutations(relays, k):
            segs = round_robin(g, (s, d), [s, *chain, d], max_paths)
            if any(len(seg) == 0 for seg in segs):
                continue
            options = [[sub for r in range(1, len(seg) + 1) for sub in itertools.combinations(seg, r)] for seg in segs]
            for pick in itertools.product(*options):
                hops = sum(len(p) - 1 for sub in pick for p in sub)
                if best is not None and hops > best[0]:
                    continue
                sec = exact_security(g, [list(sub) for sub in pick], list(chain))
                if sec >= eps - 1e-12 and (best is None or (hops, -sec) < (best[0], -best[1])):
                    best = (hops, sec)
    return best


def least_paths(g: nx.Graph, s, d, u, v, k: int, by_hops: bool) -> list[list]:
    """The ``k`` least simple ``u``-``v`` paths of request ``(s, d)`` (no relay is ``s``, ``d`` or
    of ``p = 0``) by ``(hops, cost, reversed nodes)`` or ``(cost, hops, reversed nodes)``.

    networkx's ``shortest_simple_paths`` gives the ``k``-th least hops (or cost: edge weight
    ``(c(a) + c(b)) / 2``, the two ends counted 0, so a path's weight is its relays' cost); then every
    simple path up to that value is listed (depth first, cut there) and sorted by the whole key."""
    keep = [x for x in g.nodes if x in (u, v) or (x not in (s, d) and g.nodes[x]["p"] > 0)]
    h = g.subgraph(keep)
    if not nx.has_path(h, u, v):
        return []
    cost = {x: 0 if x in (u, v) else node_cost(g.nodes[x]["p"]) for x in keep}

    def primary(path):
        return len(path) - 1 if by_hops else sum(cost[x] for x in path)

    weight = None if by_hops else (lambda a, b, _: (cost[a] + cost[b]) / 2)
    bound = primary(list(itertools.islice(nx.shortest_simple_paths(h, u, v, weight=weight), k))[-1])
    taken: list = []
    stack = [(u, [u], 0)]
    while stack:
        x, path, value = stack.pop()
        if x == v:
            taken.append(path)
            continue
        for y in h.neighbors(x):
            nxt = value + (1 if by_hops else cost[y])
            if y not in path and nxt <= bound:
                stack.append((y, path + [y], nxt))

    def key(path):
        c = sum(cost[x] for x in path)
        return ((len(path) - 1, c) if by_hops else (c, len(path) - 1)), tuple(reversed(path))

    return sorted(taken, key=key)[:k]


def union_security(g: nx.Graph, paths: list[list]) -> float:
    """P(some path has every relay safe), by inclusion-exclusion over the sets of paths."""
    total = 0.0
    for r in range(1, len(paths) + 1):
        for group in itertools.combinations(paths, r):
            relays = {x for q in group for x in q[1:-1]}
            total += (-1) ** (r + 1) * math.prod(g.nodes[x]["p"] for x in relays)
    return total


def brute_force_wide(g: nx.Graph, s, d, eps: float, relays: list, k: int, chain0: tuple, full0: list[list[list]],
                     union_cap: int = 16) -> tuple[int, float] | None:
    """``smr-level``'s wide space by brute force (issue 39, docs/algorithms.md): every ordered
    chain of distinct relays of ``relays`` (the candidates, :func:`detour_order` cut at the
    ``candidates`` option), the empty one included; per segment ``(u, v)`` the
    candidates ``C(u, v)`` = the ``k`` least paths by hops, then the ``k`` least by cost (new
    ones), then, on a segment of ``chain0``, the paths of its full route ``full0`` (new ones,
    up to ``union_cap`` in all); every choice of a non-empty subset per segment. A route meets
    ``eps`` when ``prod p(chain) x prod (exact security of each segment alone) >= eps - 1e-12``
    (a segment's by :func:`union_security`; at most 10 candidates, else that is too slow).
    Returns the fewest hops of a met route and the highest such product at those hops, or None."""
    nodes0 = [s, *chain0, d]
    extra = {(x, y): seg for x, y, seg in zip(nodes0, nodes0[1:], full0)}
    options: dict[tuple, list[tuple[int, float]]] = {}

    def segment_options(u, v):
        """(hops, best exact security at those hops) of every non-empty subset of C(u, v)."""
        if (u, v) not in options:
            cands: list[list] = []
            for q in least_paths(g, s, d, u, v, k, True) + least_paths(g, s, d, u, v, k, False):
                if q not in cands:
                    cands.append(q)
            for q in extra.get((u, v), []):
                if len(cands) < union_cap and list(q) not in cands:
                    cands.append(list(q))
            best: dict[int, float] = {}
            for r in range(1, len(cands) + 1):
                for sub in itertools.combinations(cands, r):
                    hops = sum(len(q) - 1 for q in sub)
                    sec = union_security(g, list(sub))
                    best[hops] = max(best.get(hops, -1.0), sec)
            options[(u, v)] = sorted(best.items())
        return options[(u, v)]

    found: list = [None]

    def extend(pairs, j, hops, sec):
        if sec < eps - 1e-12 or (found[0] is not None and hops > found[0][0]):
            return
        if j == len(pairs):
            if found[0] is None or (hops, -sec) < (found[0][0], -found[0][1]):
                found[0] = (hops, sec)
            return
        for hh, ss in segment_options(*pairs[j]):
            extend(pairs, j + 1, hops + hh, sec * ss)

    for r in range(len(relays) + 1):
        for chain in itertools.permutations(relays, r):
            nodes = [s, *chain, d]
            extend(list(zip(nodes, nodes[1:])), 0, 0, math.prod(g.nodes[x]["p"] for x in chain))
    return found[0]
