"""Node positions for drawing a network."""

from __future__ import annotations

from collections.abc import Hashable

import networkx as nx

from ..network import Network


def file_positions(network: Network) -> dict[Hashable, tuple[float, float]] | None:
    """Every node's position from the file (``pos``, ``x``/``y`` or ``Longitude``/``Latitude``), or None if one lacks it."""
    pos: dict[Hashable, tuple[float, float]] = {}
    for v, d in network.graph.nodes(data=True):
        if isinstance(d.get("pos"), (list, tuple)) and len(d["pos"]) == 2:
            pos[v] = (float(d["pos"][0]), float(d["pos"][1]))
        elif d.get("x") is not None and d.get("y") is not None:
            pos[v] = (float(d["x"]), float(d["y"]))
        elif d.get("Longitude") is not None and d.get("Latitude") is not None:
            pos[v] = (float(d["Longitude"]), float(d["Latitude"]))
        else:
            return None
    return pos


def node_positions(network: Network, seed: int = 0) -> dict[Hashable, tuple[float, float]]:
    """Positions from the file (:func:`file_positions`) or else a seeded layout."""
    pos = file_positions(network)
    if pos is not None:
        return pos
    return {v: (float(x), float(y)) for v, (x, y) in nx.spring_layout(network.graph, seed=seed).items()}
