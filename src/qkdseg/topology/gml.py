"""GML (node ids from the integer ``id`` field)."""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from .formats import _check_simple, _flat_graph, register_format


def read_gml(path: Path, where: str, **_) -> nx.Graph:
    g = nx.read_gml(path, label=None)
    _check_simple(g, where)
    return g


def write_gml(network, path: Path) -> None:
    nx.write_gml(_flat_graph(network.graph), path, stringizer=str)


register_format("gml", (".gml",), read_gml, write_gml)
