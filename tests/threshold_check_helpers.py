"""The brute force of the independent field check of issue 40 (tests/test_threshold_field_check.py): the exact
security of a threshold route by enumerating every compromise state of its risky nodes, written from docs/model.md
(sections 1, 2, 4a; choices item 5), docs/json.md and docs/algorithms.md ("Threshold sharing") alone."""

from __future__ import annotations

import itertools

import networkx as nx

TOL = 1e-9


def _p_of(g: nx.Graph, v, source, destination) -> float:
    """The node's probability of NOT being compromised, as model.md sections 1 and choices item 5 define it."""
    if v == source or v == destination:
        return 1.0
    data = g.nodes[v]
    if "p" in data:
        return float(data["p"])
    if data.get("trusted"):
        return 1.0
    raise AssertionError(f"node {v} has no p")


def brute(g: nx.Graph, rd: dict, parts: list[list[int]] | None = None) -> dict:
    """Exact security of a threshold route by enumerating every compromise state of its risky nodes.

    ``rd`` is the route's JSON object; ``parts`` optionally the path indices of each segment (a global key's
    parts), else every path. Returns the route's security, each segment's, and the independent-paths figure.
    """
    s, d, T = rd["source"], rd["destination"], rd["tolerate"]
    segs = [seg["paths"] for seg in rd["segments"]]
    if parts is not None:
        segs = [[segs[j][i] for i in idx] for j, idx in enumerate(parts)]
    chain = list(rd["segment_nodes"][1:-1])
    nodes = sorted({v for paths in segs for path in paths for v in path[1:-1]} | set(chain), key=repr)
    p = {v: _p_of(g, v, s, d) for v in nodes}
    risky = [v for v in nodes if p[v] < 1.0]
    assert len(risky) <= 18, "brute force too large"
    total = 0.0
    seg_sec = [0.0] * len(segs)
    for state in itertools.product((False, True), repeat=len(risky)):  # True = compromised
        prob = 1.0
        bad = set()
        for v, c in zip(risky, state):
            prob *= (1.0 - p[v]) if c else p[v]
            if c:
                bad.add(v)
        if prob == 0.0:
            continue
        oks = []
        for j, paths in enumerate(segs):
            intact = sum(1 for path in paths if not (set(path[1:-1]) & bad))
            ok = intact >= T + 1
            oks.append(ok)
            if ok:
                seg_sec[j] += prob
        if all(oks) and not (set(chain) & bad):
            total += prob
    # the independent figure: each path intact with the product of its relays' p, paths independent
    indep = 1.0
    for v in chain:
        indep *= p[v]
    for paths in segs:
        qs = []
        for path in paths:
            q = 1.0
            for v in path[1:-1]:
                q *= p[v]
            qs.append(q)
        tail = 0.0
        for pattern in itertools.product((False, True), repeat=len(qs)):
            if sum(pattern) >= T + 1:
                pr = 1.0
                for q, up in zip(qs, pattern):
                    pr *= q if up else 1.0 - q
                tail += pr
        indep *= tail
    return {"security": total, "segments": seg_sec, "independent": indep}


def _shared_relays(g: nx.Graph, rd: dict) -> bool:
    """Whether some risky relay (an interior node with p < 1) lies on two paths of the route (within or across
    segments)."""
    seen = set()
    for seg in rd["segments"]:
        for path in seg["paths"]:
            for v in path[1:-1]:
                if _p_of(g, v, rd["source"], rd["destination"]) < 1.0:
                    if v in seen:
                        return True
                    seen.add(v)
    return False


def _check(g: nx.Graph, rd: dict, T: int) -> None:
    assert rd["sharing"] == "threshold" and rd["tolerate"] == T, rd
    assert not rd["blocked"]
    for seg in rd["segments"]:
        assert len(seg["paths"]) >= T + 1, seg  # m <= T must have been refused
    b = brute(g, rd)
    assert abs(rd["security"] - b["security"]) <= TOL, (rd, b)
    for seg, want in zip(rd["segments"], b["segments"]):
        assert abs(seg["security"] - want) <= TOL, (rd, b)
    assert abs(rd["security_independent"] - b["independent"]) <= TOL, (rd, b)
    rec = rd.get("reconstruction")
    if rec:
        assert rec["scheme"] == "xor-all", rec
        for key in rec["global_keys"]:
            parts = [part["paths"] for part in sorted(key["parts"], key=lambda x: x["segment"])]
            kb = brute(g, rd, parts)
            assert abs(key["security"] - kb["security"]) <= TOL, (rd, kb)
            assert key["security"] >= rec["epsilon"] - TOL
