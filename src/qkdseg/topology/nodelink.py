"""networkx node-link JSON: both the ``links`` and the ``edges`` key are read;
``links`` is written, canonically (the same network gives byte-identical files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import networkx as nx

from ..errors import NetworkError, TopologyFileError
from .formats import _json_safe, register_format


def _graph_from_node_link(data: Any, where: str) -> nx.Graph:
    if not isinstance(data, dict):
        raise TopologyFileError(f"{where}: expected a node-link JSON object, got {type(data).__name__}")
    if "nodes" not in data or not isinstance(data["nodes"], list):
        raise TopologyFileError(f"{where}: missing list field 'nodes'")
    key = "links" if "links" in data else "edges" if "edges" in data else None
    if key is None:
        raise TopologyFileError(f"{where}: missing list field 'links' (or 'edges')")
    if not isinstance(data[key], list):
        raise TopologyFileError(f"{where}: field {key!r} must be a list")
    g = nx.Graph()
    g.graph.update(data.get("graph") or {})
    for k, node in enumerate(data["nodes"]):
        if not isinstance(node, dict) or "id" not in node:
            raise TopologyFileError(f"{where}: nodes[{k}] has no field 'id'")
        nid = node["id"]
        if isinstance(nid, (list, dict)):
            raise TopologyFileError(f"{where}: nodes[{k}]: id {nid!r} is not a scalar")
        if nid in g:
            raise NetworkError(f"{where}: node {nid!r}: duplicate id")
        g.add_node(nid, **{a: v for a, v in node.items() if a != "id"})
    for k, link in enumerate(data[key]):
        if not isinstance(link, dict) or "source" not in link or "target" not in link:
            raise TopologyFileError(f"{where}: {key}[{k}] needs fields 'source' and 'target'")
        u, v = link["source"], link["target"]
        for end in (u, v):
            if isinstance(end, (list, dict)) or end not in g:
                raise NetworkError(f"{where}: link ({u!r}, {v!r}): node {end!r} is not declared")
        if u == v:
            raise NetworkError(f"{where}: link ({u!r}, {v!r}): self-loop")
        if g.has_edge(u, v):
            raise NetworkError(f"{where}: link ({u!r}, {v!r}): duplicate link")
        g.add_edge(u, v, **{a: w for a, w in link.items() if a not in ("source", "target", "key")})
    return g



def read_json(path: Path, where: str) -> nx.Graph:
    with path.open("r", encoding="utf-8") as fh:
        return _graph_from_node_link(json.load(fh), where)


def write_json(network, path: Path) -> None:
    data = nx.node_link_data(network.graph, edges="links")
    data = _json_safe(data)
    data["graph"].setdefault("name", network.name)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


register_format("json", (".json",), read_json, write_json)
