"""Independent checkers: they recompute from a route's JSON and the network
(as a plain networkx graph) alone, never calling qkdseg's routing or security
code.

- :func:`check_paths`: every path is a valid simple path of its segment.
- :func:`check_smr_invariants`: segment nodes trusted, no untrusted relay and
  no link in two paths, and (with unlimited paths) no path left after the
  removals.
- :func:`brute_security`: exact security by enumerating compromise states
  (or inclusion-exclusion per segment when segments share no relay).
- :func:`best_path_security`: the optimum ExDijkstra must reach, by networkx's
  own Dijkstra over node costs.
"""

from __future__ import annotations

import itertools
import math

import networkx as nx


def relays(path):
    return list(path[1:-1])


def risky(g, path):
    return [v for v in relays(path) if g.nodes[v]["p"] < 1.0]


def check_paths(g: nx.Graph, route: dict) -> None:
    """Every path is a simple path of ``g`` joining its segment's ends."""
    nodes = route["segment_nodes"]
    assert nodes[0] == route["source"] and nodes[-1] == route["destination"]
    assert len(route["segments"]) == len(nodes) - 1
    for j, seg in enumerate(route["segments"]):
        assert (seg["source"], seg["target"]) == (nodes[j], nodes[j + 1])
        assert seg["paths"], f"segment {j} has no path"
        for path in seg["paths"]:
            assert path[0] == seg["source"] and path[-1] == seg["target"], path
            assert len(set(path)) == len(path), f"not simple: {path}"
            for a, b in zip(path, path[1:]):
                assert g.has_edge(a, b), f"no link {a}-{b} in {path}"
            for v in relays(path):
                assert v not in (route["source"], route["destination"]), f"request end {v} relays in {path}"
                assert g.nodes[v]["p"] > 0.0, f"p=0 relay {v} used"


def check_smr_invariants(g: nx.Graph, route: dict, unlimited: bool = True) -> None:
    """MODEL.md section 3 invariants of SMR (and of ``disjoint``)."""
    check_paths(g, route)
    for v in route["segment_nodes"][1:-1]:
        assert g.nodes[v]["trusted"], f"segment node {v} is not trusted"
    seen_relays, seen_links = set(), set()
    for seg in route["segments"]:
        for path in seg["paths"]:
            for v in relays(path):
                if not g.nodes[v]["trusted"]:
                    assert v not in seen_relays, f"untrusted relay {v} in two paths"
                    seen_relays.add(v)
            for a, b in zip(path, path[1:]):
                e = frozenset((a, b))
                assert e not in seen_links, f"link {a}-{b} in two paths"
                seen_links.add(e)
    if not unlimited:
        return
    s, d = route["source"], route["destination"]
    for seg in route["segments"]:
        a, b = seg["source"], seg["target"]
        h = nx.Graph()
        h.add_nodes_from(g.nodes)
        for u, v in g.edges:
            if frozenset((u, v)) in seen_links:
                continue
            h.add_edge(u, v)
        banned = {v for v in g.nodes if v not in (a, b) and (v in seen_relays or v in (s, d) or g.nodes[v]["p"] == 0.0)}
        h.remove_nodes_from(banned)
        assert not nx.has_path(h, a, b), f"segment {a}->{b} still has a path after the removals"


def _segment_secure_prob(g, paths, fixed):
    """P(at least one path secure) by inclusion-exclusion, given fixed states."""
    total = 0.0
    for k in range(1, len(paths) + 1):
        for combo in itertools.combinations(paths, k):
            union = set().union(*(set(risky(g, p)) for p in combo))
            prob = 1.0
            for v in union:
                if v in fixed:
                    prob *= 1.0 if fixed[v] else 0.0
                else:
                    prob *= g.nodes[v]["p"]
            total += (-1) ** (k + 1) * prob
    return total


def brute_security(g: nx.Graph, route: dict) -> float:
    """Exact security of xor-all, independently of qkdseg.

    Relays shared between segments (and risky chain nodes) are enumerated
    state by state; within a segment, inclusion-exclusion over its paths.
    """
    if route["blocked"]:
        return 0.0
    segs = [seg["paths"] for seg in route["segments"]]
    chain = [v for v in route["segment_nodes"][1:-1] if g.nodes[v]["p"] < 1.0]
    owners: dict = {}
    for j, paths in enumerate(segs):
        for p in paths:
            for v in risky(g, p):
                owners.setdefault(v, set()).add(j)
    cross = sorted({v for v, js in owners.items() if len(js) > 1} | set(chain), key=str)
    assert len(cross) <= 16, "too many cross-segment relays for the brute force"
    total = 0.0
    for states in itertools.product([True, False], repeat=len(cross)):
        fixed = dict(zip(cross, states))
        w = 1.0
        for v, up in fixed.items():
            w *= g.nodes[v]["p"] if up else 1.0 - g.nodes[v]["p"]
        if not all(fixed[v] for v in chain):
            continue
        val = w
        for paths in segs:
            val *= _segment_secure_prob(g, paths, fixed)
        total += val
    return total


def brute_state_security(p: dict, segments: list, chain=()) -> float:
    """Exact security by enumerating every state of every relay (tiny cases)."""
    nodes = sorted({v for seg in segments for path in seg for v in path[1:-1] if p[v] < 1} | {v for v in chain if p[v] < 1})
    total = 0.0
    for states in itertools.product([True, False], repeat=len(nodes)):
        up = dict(zip(nodes, states))
        w = math.prod(p[v] if up[v] else 1 - p[v] for v in nodes)
        ok = all(up.get(v, True) for v in chain) and all(
            any(all(up.get(v, True) for v in path[1:-1]) for path in seg) for seg in segments
        )
        total += w if ok else 0.0
    return total


def path_psec(g, path) -> float:
    return math.prod(g.nodes[v]["p"] for v in relays(path))


def best_path_security(g: nx.Graph, a, b, banned=()) -> float:
    """Max over paths a->b of prod p(relays), via networkx Dijkstra on -log p."""
    banned = set(banned) - {a, b}

    def w(u, v, _d):
        if v in banned:
            return None
        if v == b:
            return 0.0
        pv = g.nodes[v]["p"]
        return None if pv == 0.0 else -math.log(pv)

    try:
        dist = nx.dijkstra_path_length(g, a, b, weight=w)
    except nx.NetworkXNoPath:
        return 0.0
    return math.exp(-dist)
