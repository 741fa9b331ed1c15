"""Hypothesis strategies, in one place."""

from __future__ import annotations

import networkx as nx
from hypothesis import strategies as st

P_VALUES = [0.0, 0.5, 0.8, 0.9, 1.0]


@st.composite
def small_networks(draw, min_nodes=2, max_nodes=8, p_values=P_VALUES):
    """A random small graph with trusted flags and p from a small set (so ties
    between paths happen often)."""
    n = draw(st.integers(min_nodes, max_nodes))
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs))) if pairs else []
    g = nx.Graph()
    for v in range(n):
        trusted = draw(st.booleans())
        g.add_node(v, trusted=trusted, p=1.0 if trusted else draw(st.sampled_from(p_values)))
    g.add_edges_from(chosen)
    return g
