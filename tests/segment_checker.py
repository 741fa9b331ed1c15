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
