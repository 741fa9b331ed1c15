"""Node positions for drawing a network."""

from __future__ import annotations

from collections.abc import Hashable

import networkx as nx

from ..network import Network


def node_positions(network: Network, seed: int = 0) -> dict[Hashable, tuple[float, float]]:
    """Positions from the file (``pos``, or ``x``/``y``) or else a seeded layout."""
    g = network.graph
    pos: dict[Hashable, tuple[float, float]] = {}
    for v, d in g.nodes(data=True):
        if isinstance(d.get("pos"), (list, tuple)) and len(d["pos"]) == 2:
            pos[v] = (float(d["pos"][0]), float(d["pos"][1]))
        elif d.get("x") is not None and d.get("y") is not None:
            pos[v] = (float(d["x"]), float(d["y"]))
        elif d.get("Longitude") is not None and d.get("Latitude") is not None:
            pos[v] = (float(d["Longitude"]), float(d["Latitude"]))
    if len(pos) == g.number_of_nodes():
        return pos
    return {v: (float(x), float(y)) for v, (x, y) in nx.spring_layout(g, seed=seed).items()}
