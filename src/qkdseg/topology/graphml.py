"""GraphML (node ids are strings by that format's definition)."""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from .formats import _check_simple, _flat_graph, register_format


def read_graphml(path: Path, where: str, **_) -> nx.Graph:
    g = nx.read_graphml(path)
    _check_simple(g, where)
    return g


def write_graphml(network, path: Path) -> None:
    nx.write_graphml(_flat_graph(network.graph), path)


register_format("graphml", (".graphml", ".xml"), read_graphml, write_graphml)
