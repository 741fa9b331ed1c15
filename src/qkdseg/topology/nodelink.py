"""networkx node-link JSON: both the ``links`` and the ``edges`` key are read;
``links`` is written, canonically (the same network gives byte-identical files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from ..errors import NetworkError, TopologyFileError
from ..network import DEFAULT_POOL_BITS, Network, network_from_records
from .formats import register_format


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
    if data.get("directed"):
        raise TopologyFileError(f"{where}: the graph is directed; QKD links are undirected")
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



def _fast_network(data: Any, name: str, default_p: float | None, default_pool_bits: int) -> Network | None:
    """The array form straight from the parsed file, for the common clean case.

    ``None`` whenever the file has anything unusual (ids that are not ints or
    strings, a duplicate, an undeclared end, values of other kinds, ...):
    the caller then takes the general path, which accepts the same files and
    names any fault. See :func:`qkdseg.network.network_from_records`.
    """
    if not isinstance(data, dict) or data.get("directed") or not isinstance(data.get("nodes"), list):
        return None
    key = "links" if "links" in data else "edges" if "edges" in data else None
    if key is None or not isinstance(data[key], list):
        return None
    graph_attrs = data.get("graph") or {}
    nodes, links = data["nodes"], data[key]
    if not isinstance(graph_attrs, dict) or not set(map(type, nodes)) <= {dict} or not set(map(type, links)) <= {dict}:
        return None
    try:
        ids = [node["id"] for node in nodes]
        src = [link["source"] for link in links]
        dst = [link["target"] for link in links]
    except KeyError:
        return None
    if not set(map(type, ids)) <= {int, str}:
        return None
    index = dict(zip(ids, range(len(ids))))
    if len(index) != len(ids):
        return None
    try:
        u = np.fromiter(map(index.__getitem__, src), dtype=np.int64, count=len(src))
        v = np.fromiter(map(index.__getitem__, dst), dtype=np.int64, count=len(dst))
    except (KeyError, TypeError):
        return None
    name = str(graph_attrs.get("name") or name)
    return network_from_records(
        ids, index, nodes, u, v, links, graph_attrs=graph_attrs, name=name,
        default_p=default_p, default_pool_bits=default_pool_bits,
    )


def read_json(path: Path, where: str, *, default_p: float | None = None, default_pool_bits: int = DEFAULT_POOL_BITS):
    """The network in a node-link JSON file: a :class:`Network` built straight
    from the parsed records when the file is clean (the fast path for large
    networks), else the raw :class:`networkx.Graph` for :class:`Network` to
    validate."""
    with path.open("r", encoding="utf-8-sig") as fh:
        data = json.load(fh)
    net = _fast_network(data, path.stem, default_p, default_pool_bits)
    if net is not None:
        return net
    return _graph_from_node_link(data, where)


def _node_link_data(network: Network) -> dict:
    """``networkx.node_link_data(network.graph, edges="links")``, made safe for
    JSON; for a network built from records, straight from them (no graph)."""
    rec = network._records
    if network._graph is not None or rec is None:
        data = nx.node_link_data(network.graph, edges="links")
        data["graph"] = dict(data["graph"])  # the caller may add to it
        return data
    a = network.arrays
    return {
        "directed": False,
        "multigraph": False,
        "graph": dict(rec.graph_attrs),
        "nodes": [{**attrs, "id": v} for v, attrs in rec.node_items(a)],
        "links": [{**attrs, "source": u, "target": v} for u, v, attrs in rec.edge_items(a)],
    }


def _numpy_scalar(value: Any) -> Any:
    """``json.dumps``'s fallback: numpy scalars as Python numbers (tuples are lists already)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def write_json(network, path: Path) -> None:
    data = _node_link_data(network)
    data["graph"].setdefault("name", network.name)
    path.write_text(json.dumps(data, indent=1, sort_keys=True, default=_numpy_scalar) + "\n", encoding="utf-8")


register_format("json", (".json",), read_json, write_json)
