"""Independent checkers: they recompute from a route's JSON and the network
(as a plain networkx graph) alone, never calling qkdseg's routing or security
code.

- :func:`check_paths`: every path is a valid simple path of its segment.
- :func:`check_smr_invariants`: segment nodes trusted, no untrusted relay and
  no link in two paths, and (with unlimited paths) no path left after the
  removals.
- :func:`brute_security`: exact security by enumerating compromise states
  (or inclusion-exclusion per segment when segments share no relay).
- :func:`threshold_brute`: exact security under k-of-m sharing by enumerating
  every state of the risky relays.
- :func:`best_path_security`: the optimum ExDijkstra must reach, by networkx's
  own Dijkstra over node costs.
- :class:`SMRChecker`: SMR's two steps and ExDijkstra's exact tie rules,
  written from docs/model.md (section 3 and its Refinements) alone.
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
    """docs/model.md section 3 invariants of SMR (and of ``disjoint``)."""
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


# -- SMR, independently (docs/model.md section 3 and its Refinements) ------------
#: Node costs are ``-log p`` in whole units of 2**-32 (Refinement 2): integers here,
#: so equal products tie exactly and the hop tie-break is exact.
COST_UNITS = 2**32
#: "Strictly better" in step 1 (Refinement 3).
STRICT_MARGIN = 1e-12


def cost_units(p: float) -> int | None:
    """``-log p`` in units of 2**-32 (None: an unusable relay, p = 0)."""
    if p <= 0.0:
        return None
    return int(round(-math.log(p) * COST_UNITS))


class SMRChecker:
    """SMR written from docs/model.md alone, on a networkx graph.

    Node *index* is the position in ``g.nodes`` (the network's node order).
    Masks (Refinements 1 and 6): the request's ends never relay; links whose
    pool is below ``block_bits`` (or empty, without ``block_bits``) are not
    used. ExDijkstra (section 3, Refinement 10) maximises the product of the
    relays' p on quantised integer costs, then fewer hops, then takes the
    smallest-index node among each node's optimal predecessors.
    """

    def __init__(self, g: nx.Graph, source, destination, *, block_bits: int | None = None, metric: str = "hops"):
        self.g = g
        self.s, self.d = source, destination
        self.order = {v: i for i, v in enumerate(g.nodes)}
        self.metric = metric
        if block_bits is None:
            self.banned_links = {frozenset(e) for e in g.edges if g.edges[e].get("pool_bits", 100_000) <= 0}
        else:
            self.banned_links = {frozenset(e) for e in g.edges if g.edges[e].get("pool_bits", 100_000) < block_bits}
        self.request_banned = {source, destination}

    # ExDijkstra ------------------------------------------------------------------
    def exdijkstra(self, a, b, banned_nodes: set, banned_links: set):
        """The most secure path a -> b, or None. Labels are integers
        ``cost * 2**16 + hops`` (hops < 2**16), compared as (cost, hops)."""
        g = self.g
        shift = 1 << 16

        def step(u, v):  # label increase of the move u -> v, None if forbidden
            if frozenset((u, v)) in banned_links:
                return None
            if v == b:
                return 1
            if v == a or v in banned_nodes:
                return None
            c = cost_units(g.nodes[v]["p"])
            return None if c is None else c * shift + 1

        # Plain Dijkstra over labels (networkx computes the distances); the
        # target never relays, so searches do not go through it.
        def weight(u, v, _data):
            if u == b:
                return None
            return step(u, v)

        dist = nx.single_source_dijkstra_path_length(g, a, weight=weight)
        if b not in dist:
            return None
        path = [b]
        while path[-1] != a:
            v = path[-1]
            preds = [u for u in g.neighbors(v) if u in dist and u != b and step(u, v) is not None
                     and dist[u] + step(u, v) == dist[v]]
            path.append(min(preds, key=self.order.__getitem__))
        path.reverse()
        return path

    # Step 2 -------------------------------------------------------------------------
    def round_robin(self, segment_nodes, max_paths: int | None = None):
        """Step 2: one path per segment and round; each path's untrusted relays
        and links are removed for all segments."""
        banned_nodes = set(self.request_banned)
        banned_links = set(self.banned_links)
        pairs = list(zip(segment_nodes, segment_nodes[1:]))
        paths = [[] for _ in pairs]
        active = [True] * len(pairs)
        while any(active):
            for j, (a, b) in enumerate(pairs):
                if not active[j]:
                    continue
                path = self.exdijkstra(a, b, banned_nodes, banned_links)
                if path is None:
                    active[j] = False
                    continue
                paths[j].append(path)
                banned_nodes |= {v for v in path[1:-1] if not self.g.nodes[v]["trusted"]}
                banned_links |= {frozenset(e) for e in zip(path, path[1:])}
                if max_paths is not None and len(paths[j]) >= max_paths:
                    active[j] = False
        return paths

    def security(self, segment_nodes, paths) -> float:
        """Exact security of xor-all over ``paths`` (the chain's p included)."""
        if any(not seg for seg in paths):
            return 0.0
        route = {
            "blocked": False,
            "segment_nodes": list(segment_nodes),
            "segments": [{"paths": seg} for seg in paths],
        }
        return brute_security(self.g, route)

    # Step 1 -------------------------------------------------------------------------
    def _distances(self, source) -> dict:
        """Distances on the full topology (Refinement 4: no mask applies)."""
        if self.metric == "hops":
            return nx.single_source_shortest_path_length(self.g, source)
        return nx.single_source_dijkstra_path_length(self.g, source, weight="length_km")

    def segment_nodes(self) -> list:
        """Step 1: greedy from the source, one candidate per iteration."""
        g, s, d = self.g, self.s, self.d
        dist_d = self._distances(d)
        chosen = [s]
        cur = s
        while True:
            dist_c = self._distances(cur)
            cands = [r for r in g.nodes if g.nodes[r]["trusted"] and r not in chosen and r != d
                     and r in dist_d and r in dist_c]
            if not cands:
                break
            r = min(cands, key=lambda v: (dist_c[v] + dist_d[v], self.order[v]))
            direct = self.security([cur, d], self.round_robin([cur, d], max_paths=2))
            segmented = self.security([cur, r, d], self.round_robin([cur, r, d], max_paths=2))
            if segmented > direct + STRICT_MARGIN:
                chosen.append(r)
                cur = r
            else:
                break
        return chosen + [d]

    def route(self, max_paths: int | None = None):
        """``(segment_nodes, paths)`` of SMR."""
        nodes = self.segment_nodes()
        return nodes, self.round_robin(nodes, max_paths)


def threshold_brute(p: dict, segments, chain, tolerate: int) -> float:
    """Every state of every risky relay, all at once as the bits of one integer (up to ~16 risky nodes): secret
    iff every chain node is safe and every segment keeps at least ``tolerate + 1`` paths with all relays safe
    (the adversary then holds fewer than k = m - tolerate shares)."""
    import numpy as np

    nodes = sorted({v for seg in segments for path in seg for v in path[1:-1] if p[v] < 1} | {v for v in chain if p[v] < 1})
    bit = {v: 1 << i for i, v in enumerate(nodes)}
    states = np.arange(1 << len(nodes), dtype=np.int64)  # bit set: node safe
    weight = np.ones(states.size)
    for v in nodes:
        weight *= np.where(states & bit[v], p[v], 1 - p[v])
    ok = np.ones(states.size, dtype=bool)
    for v in chain:
        if v in bit:
            ok &= (states & bit[v]) != 0
    for seg in segments:
        intact = np.zeros(states.size, dtype=np.int64)
        for path in seg:
            mask = sum(bit[v] for v in set(path[1:-1]) if v in bit)
            intact += (states & mask) == mask
        ok &= intact >= tolerate + 1
    return float(weight[ok].sum())


def four_path_network(p: float = 0.8):
    """``s - t - d`` (all three trusted) with four node-disjoint two-relay paths in each segment, relays at ``p``:
    the small topology of issue 40's threshold-sharing tests."""
    from qkdseg.network import Network

    g = nx.Graph()
    g.add_nodes_from(["s", "t", "d"], trusted=True)
    for seg, (a, b) in enumerate([("s", "t"), ("t", "d")]):
        for k in range(4):
            u, v = f"r{seg}{k}a", f"r{seg}{k}b"
            g.add_nodes_from([u, v], p=p)
            nx.add_path(g, [a, u, v, b])
    return Network(g, name="four")
