"""An independent checker for trusted-relay placement (docs/placement.md).

It evaluates a placement from a plain networkx graph alone, with the
independent SMR of :class:`checkers.SMRChecker` (docs/model.md section 3)
and the brute-force exact security of :func:`checkers.brute_security`;
it never calls qkdseg's routing, security or placement code. The exact
optimum is brute force over every subset of the untrusted nodes.
"""

from __future__ import annotations

import itertools

import networkx as nx
from checkers import SMRChecker


def with_trusted(g: nx.Graph, nodes) -> nx.Graph:
    """A copy of ``g`` with ``nodes`` trusted and ``p = 1``."""
    h = g.copy()
    for v in nodes:
        h.nodes[v]["trusted"] = True
        h.nodes[v]["p"] = 1.0
    return h


def demand_security(g: nx.Graph, s, d) -> float:
    """Exact end-to-end security of SMR from ``s`` to ``d`` (0 when blocked)."""
    chk = SMRChecker(g, s, d)
    nodes, paths = chk.route()
    return chk.security(nodes, paths)


def objective(g: nx.Graph, demands, kind: str = "security") -> float:
    """``security``: weighted mean over ``demands`` (``(s, d, w)``, routed
    from ``s``); ``worst``: the minimum."""
    vals = [(demand_security(g, s, d), w) for s, d, w in demands]
    if kind == "worst":
        return min(v for v, _ in vals)
    total = sum(w for _, w in vals)
    return sum(v * w for v, w in vals) / total


def brute_force(g: nx.Graph, k: int, demands, kind: str = "security") -> tuple[float, tuple]:
    """The best objective over every ``k``-subset of the untrusted nodes, and
    the first subset (in node order) that reaches it."""
    cands = [v for v in g.nodes if not g.nodes[v]["trusted"]]
    best, arg = -1.0, ()
    for combo in itertools.combinations(cands, k):
        val = objective(with_trusted(g, combo), demands, kind)
        if val > best:
            best, arg = val, combo
    return best, arg


def all_pairs(g: nx.Graph) -> list[tuple]:
    """Every unordered pair, routed from the earlier node in ``g.nodes``."""
    nodes = list(g.nodes)
    return [(nodes[i], nodes[j], 1.0) for i in range(len(nodes)) for j in range(i + 1, len(nodes))]
