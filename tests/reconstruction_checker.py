"""An independent checker for routes and their key reconstruction.

It recomputes everything from a route's JSON (``Route.to_dict()`` or
``qkdseg route --format json``) and the network *file* (node-link JSON) alone:
it never imports qkdseg, so a bug in qkdseg's security or reconstruction code
cannot hide itself here.

- :func:`load_network`: nodes (``p``, ``trusted``) and links from the file.
- :func:`check_paths`: valid simple paths between their segment's ends, with
  the disjointness the algorithm's own definition promises.
- :func:`exact_security`: the exact probability that a set of parts (one
  group of paths per segment) and the chain stay secret, by enumerating the
  states of the risky nodes that occur in more than one place.
- :func:`check_route`: paths, exact security, MSP's claimed security.
- :func:`check_reconstruction`: every global key's parts, its security
  recomputed from the parts, the level, no piece used twice (outside
  ``reuse``), the key-bit total.
- :func:`paper_key_count`: how many keys the paper scheme delivers, from
  docs/reconstruction.md's reading of it (routes without shared relays).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

#: Tolerance of every float comparison (probabilities).
TOL = 1e-9
#: docs/reconstruction.md: a key meets epsilon when ``security >= epsilon - 1e-12``.
LEVEL_SLACK = 1e-12


class Net:
    def __init__(self, nodes: dict, links: set):
        self.nodes = nodes  # id -> {"p": float, "trusted": bool}
        self.links = links  # frozenset({u, v})

    def p(self, v) -> float:
        return self.nodes[v]["p"]

    def trusted(self, v) -> bool:
        return self.nodes[v]["trusted"]


def load_network(path) -> Net:
    """Read a node-link JSON network file (``links`` or ``edges`` key)."""
    data = json.loads(Path(path).read_text())
    nodes = {}
    for nd in data["nodes"]:
        trusted = bool(nd.get("trusted", False))
        p = nd.get("p")
        p = float(p) if p is not None else (1.0 if trusted else None)
        assert p is not None, f"node {nd['id']} has no p"
        nodes[nd["id"]] = {"p": p, "trusted": trusted}
    key = "links" if "links" in data else "edges"
    links = {frozenset((e["source"], e["target"])) for e in data[key]}
    return Net(nodes, links)


# -- paths ---------------------------------------------------------------------
def check_paths(net: Net, route: dict) -> None:
    """Valid simple paths, and the disjointness each algorithm promises.

    ``smr``, ``disjoint`` and ``msp`` remove every path's untrusted relays and
    links before the next path (across all segments for SMR), so no untrusted
    relay and no link is in two paths of the route; ``single`` has one path;
    ``disjoint``, ``single`` and ``msp`` have no segment node.
    """
    algo = route["algorithm"]
    s, d = route["source"], route["destination"]
    if route["blocked"]:
        assert route["segments"] == [] and route["security"] == 0.0 and route["consumed_bits"] == 0
        return
    nodes = route["segment_nodes"]
    assert nodes[0] == s and nodes[-1] == d
    assert len(route["segments"]) == len(nodes) - 1
    assert len(set(nodes)) == len(nodes), f"segment node repeated: {nodes}"
    for v in nodes[1:-1]:
        assert net.trusted(v), f"segment node {v} is not trusted"
    if algo in ("disjoint", "single", "msp"):
        assert len(nodes) == 2, f"{algo} must have no segment node: {nodes}"
    hops = 0
    seen_relays, seen_links = set(), set()
    n_paths = 0
    for j, seg in enumerate(route["segments"]):
        assert (seg["source"], seg["target"]) == (nodes[j], nodes[j + 1])
        assert seg["paths"], f"segment {j} has no path"
        for path in seg["paths"]:
            n_paths += 1
            assert path[0] == nodes[j] and path[-1] == nodes[j + 1], path
            assert len(set(path)) == len(path), f"not simple: {path}"
            for a, b in zip(path, path[1:]):
                link = frozenset((a, b))
                assert link in net.links, f"no link {a}-{b} in {path}"
                assert link not in seen_links, f"link {a}-{b} in two paths"
                seen_links.add(link)
                hops += 1
            for v in path[1:-1]:
                assert v not in (s, d), f"request end {v} relays in {path}"
                assert net.p(v) > 0.0, f"p=0 relay {v} used"
                if not net.trusted(v):
                    assert v not in seen_relays, f"untrusted relay {v} in two paths"
                    seen_relays.add(v)
    if algo == "single":
        assert n_paths == 1
    if route.get("options", {}).get("max_paths") is not None:
        for seg in route["segments"]:
            assert len(seg["paths"]) <= route["options"]["max_paths"]
    assert route["consumed_bits"] == hops * route["block_bits"]


# -- security ------------------------------------------------------------------
def exact_security(net: Net, parts: list[list[list]], chain: list) -> float:
    """P(every chain node is safe and every part has a path with all relays safe).

    Enumerates the states of the risky nodes (p < 1) that occur in more
    than one path or in a path and the chain; given them, everything else is
    independent. With no part, or an empty part, the probability is 0.
    """
    if not parts or any(not part for part in parts):
        return 0.0
    clauses = [[[v for v in path[1:-1] if net.p(v) < 1.0] for path in part] for part in parts]
    risky_chain = [v for v in chain if net.p(v) < 1.0]
    count: dict = {}
    for part in clauses:
        for relays in part:
            for v in set(relays):
                count[v] = count.get(v, 0) + 1
    for v in risky_chain:
        count[v] = count.get(v, 0) + 1
    shared = sorted((v for v, c in count.items() if c > 1), key=repr)
    assert len(shared) <= 20, "too many shared relays for the checker"
    total = 0.0
    for state in itertools.product((True, False), repeat=len(shared)):
        safe = dict(zip(shared, state))
        weight = math.prod(net.p(v) if ok else 1.0 - net.p(v) for v, ok in safe.items())
        if weight == 0.0:
            continue
        prob = 1.0
        for v in risky_chain:
            prob *= (1.0 if safe[v] else 0.0) if v in safe else net.p(v)
        for part in clauses:
            fail = 1.0
            for relays in part:
                if all(safe.get(v, True) for v in relays):
                    ok = math.prod(net.p(v) for v in relays if v not in safe)
                else:
                    ok = 0.0
                fail *= 1.0 - ok
            prob *= 1.0 - fail
        total += weight * prob
    return total


def brute_force_security(net: Net, parts: list[list[list]], chain: list) -> float:
    """The same probability by enumerating every risky node (small cases only)."""
    if not parts or any(not part for part in parts):
        return 0.0
    risky = sorted({v for part in parts for path in part for v in path[1:-1] if net.p(v) < 1.0}
                   | {v for v in chain if net.p(v) < 1.0}, key=repr)
    assert len(risky) <= 16
    total = 0.0
    for state in itertools.product((True, False), repeat=len(risky)):
        safe = dict(zip(risky, state))
        ok = all(safe.get(v, True) for v in chain) and all(
            any(all(safe.get(v, True) for v in path[1:-1]) for path in part) for part in parts
        )
        if ok:
            total += math.prod(net.p(v) if s else 1.0 - net.p(v) for v, s in safe.items())
    return total


def independent_security(net: Net, parts: list[list[list]], chain: list) -> float:
    """The textbook formula (assumes no shared relay): MSP's "claimed" figure."""
    if not parts or any(not part for part in parts):
        return 0.0
    out = math.prod(net.p(v) for v in chain)
    for part in parts:
        out *= 1.0 - math.prod(1.0 - math.prod(net.p(v) for v in path[1:-1]) for path in part)
    return out


def check_route(net: Net, route: dict) -> float:
    """Paths, the exact security (and MSP's claim); returns the exact security."""
    check_paths(net, route)
    if route["blocked"]:
        return 0.0
    parts = [seg["paths"] for seg in route["segments"]]
    chain = route["segment_nodes"][1:-1]
    exact = exact_security(net, parts, chain)
    assert abs(route["security"] - exact) <= TOL, (route["security"], exact)
    for seg in route["segments"]:
        assert abs(seg["security"] - exact_security(net, [seg["paths"]], [])) <= TOL
    claimed = independent_security(net, parts, chain)
    assert abs(route["security_independent"] - claimed) <= TOL
    if route["algorithm"] == "msp":
        assert abs(route["security_claimed"] - claimed) <= TOL
        assert exact <= route["security_claimed"] + TOL
    return exact


# -- reconstruction --------------------------------------------------------------
def check_reconstruction(net: Net, route: dict, scheme: str | None = None, epsilon: float | None = None) -> list[float]:
    """Every global key of ``route["reconstruction"]``; returns their recomputed securities."""
    rec = route["reconstruction"]
    if scheme is not None:
        assert rec["scheme"] == scheme
    if epsilon is not None:
        assert rec["epsilon"] == epsilon
    eps = rec["epsilon"]
    B = rec["block_bits"]
    keys = rec["global_keys"]
    assert rec["key_bits"] == sum(k["bits"] for k in keys)
    if route["blocked"]:
        assert keys == [] and rec["key_bits"] == 0
        return []
    assert B == route["block_bits"]
    segs = route["segments"]
    chain = route["segment_nodes"][1:-1]
    used = set()
    combos = set()
    secs = []
    for key in keys:
        assert key["bits"] == B
        assert key["computational"] is (rec["scheme"] == "reuse")
        parts = key["parts"]
        assert [p["segment"] for p in parts] == list(range(len(segs))), "one part per segment, in order"
        groups = []
        for part in parts:
            idx = part["paths"]
            assert idx, "empty part"
            assert len(set(idx)) == len(idx)
            assert all(0 <= i < len(segs[part["segment"]]["paths"]) for i in idx)
            groups.append([segs[part["segment"]]["paths"][i] for i in idx])
            for i in idx:
                piece = (part["segment"], i)
                if rec["scheme"] != "reuse":
                    assert piece not in used, f"piece {piece} in two global keys"
                used.add(piece)
        combo = tuple(tuple(sorted(p["paths"])) for p in parts)
        assert combo not in combos, f"the same key twice: {combo}"
        combos.add(combo)
        sec = exact_security(net, groups, chain)
        assert abs(sec - key["security"]) <= TOL, (sec, key["security"])
        assert sec >= eps - TOL, f"key below epsilon: {sec} < {eps}"
        secs.append(sec)
    if rec["scheme"] == "xor-all":
        assert len(keys) <= 1
        if keys:
            assert all(len(p["paths"]) == len(segs[p["segment"]]["paths"]) for p in keys[0]["parts"])
        assert (len(keys) == 1) == (route["security"] >= eps - TOL)
    if rec["scheme"] == "reuse":
        assert rec["information_theoretic_bound_bits"] == min(len(s["paths"]) for s in segs) * B
    else:
        assert len(keys) <= min(len(s["paths"]) for s in segs)
    if rec["scheme"] == "optimal":
        assert isinstance(rec["optimal"], bool)
    if keys and route.get("consumed_bits"):
        assert abs(rec["consumed_bits_per_key_bit"] - route["consumed_bits"] / rec["key_bits"]) <= 1e-9 * route["consumed_bits"]
    elif not keys:
        assert rec["consumed_bits_per_key_bit"] is None
    return secs


def check_optimal_vs_paper(optimal_route: dict, paper_route: dict) -> None:
    """``optimal`` never delivers fewer keys than ``paper`` on the same route."""
    assert optimal_route["segments"] == paper_route["segments"]
    assert len(optimal_route["reconstruction"]["global_keys"]) >= len(paper_route["reconstruction"]["global_keys"])


# -- the paper scheme's key count, from docs/reconstruction.md ----------------------
def paper_key_count(net: Net, parts: list[list[list]], chain: list, epsilon: float) -> int:
    """Keys the paper's flexible reconstruction delivers, from the text alone.

    docs/reconstruction.md, "Our reading": a queue per segment, weakest first;
    a round merges a segment's two weakest keys into their XOR; the states
    with equal counts are c = min_j n_j, ..., 1 (segment j after n_j - c
    merges); the balanced matching folds the segments left to right, the
    matched keys so far strongest first against the next segment's keys
    weakest first, a match's security being the product; stop at the first
    c whose weakest key meets epsilon (``>= epsilon - 1e-12``); else 0.

    Only for routes whose risky relays are private to one path (every sweep:
    trusted relays have p = 1 and each path's untrusted relays are removed),
    so a key's security is a function of its parts' securities alone:
    ``1 - prod(1 - q)`` within a segment, the product across segments and
    the chain.
    """
    if not parts or any(not part for part in parts):
        return 0
    seen: set = set()
    for part in parts:
        for path in part:
            risky = {v for v in path[1:-1] if net.p(v) < 1.0}
            assert not risky & seen, "paper_key_count: a risky relay is shared"
            seen |= risky
    chain_p = math.prod(net.p(v) for v in chain)
    assert chain_p == 1.0 or not {v for v in chain if net.p(v) < 1.0} & seen, "a risky chain node relays"
    pieces = [[math.prod(net.p(v) for v in path[1:-1]) for path in part] for part in parts]
    for c in range(min(len(q) for q in pieces), 0, -1):
        per_segment = []
        for q in pieces:
            keys = sorted(q)
            while len(keys) > c:
                a, b = keys[0], keys[1]
                keys = sorted(keys[2:] + [1.0 - (1.0 - a) * (1.0 - b)])
            per_segment.append(keys)
        matched = per_segment[0]
        for keys in per_segment[1:]:
            strongest_first = sorted(matched, reverse=True)
            matched = [m * k for m, k in zip(strongest_first, sorted(keys))]
        if min(matched) * chain_p >= epsilon - LEVEL_SLACK:
            return c
    return 0
