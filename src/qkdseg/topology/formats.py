"""The file-format registry: ``name -> FileFormat`` (reader, writer, suffixes).

A format is one module with a reader, ``read(path, where) -> networkx.Graph``
(the raw graph, validated later by :class:`~qkdseg.network.Network`), and a
writer, ``write(network, path)``, registered with :func:`register_format`.
Shared helpers for the writers live here too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from ..errors import NetworkError, TopologyFileError


@dataclass(frozen=True)
class FileFormat:
    """A registered topology file format.

    Attributes
    ----------
    name : str
        What ``fmt=`` takes (``json``, ``graphml``, ``gml``).
    suffixes : tuple of str
        File suffixes that select it, the usual one first.
    read : callable
        ``read(path, where) -> networkx.Graph``.
    write : callable
        ``write(network, path) -> None``.
    """

    name: str
    suffixes: tuple[str, ...]
    read: Callable[[Path, str], nx.Graph]
    write: Callable[[Any, Path], None]


#: Name -> format, in registration order.
FORMATS: dict[str, FileFormat] = {}


def register_format(name: str, suffixes: tuple[str, ...], read: Callable, write: Callable) -> FileFormat:
    """Add a format to :data:`FORMATS`."""
    FORMATS[name] = FileFormat(name, tuple(suffixes), read, write)
    return FORMATS[name]


def _or_list(items: list[str]) -> str:
    return ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else "".join(items)


def format_of(path: Path, fmt: str | None) -> FileFormat:
    """The format ``fmt`` names, or else the one ``path``'s suffix selects."""
    if fmt:
        if fmt not in FORMATS:
            raise TopologyFileError(f"{path}: unknown format {fmt!r} (use {_or_list(list(FORMATS))})")
        return FORMATS[fmt]
    suffix = path.suffix.lower()
    for f in FORMATS.values():
        if suffix in f.suffixes:
            return f
    usual = _or_list([f.suffixes[0] for f in FORMATS.values()])
    raise TopologyFileError(f"{path}: cannot tell the format from the suffix {path.suffix!r} (use {usual})")


def _check_simple(g: nx.Graph, where: str) -> None:
    if g.is_multigraph():
        counts = Counter(tuple(sorted(map(str, e[:2]))) for e in g.edges)
        for (u, v), c in counts.items():
            if c > 1:
                raise NetworkError(f"{where}: link ({u!r}, {v!r}): duplicate link")
    if g.is_directed():
        raise TopologyFileError(f"{where}: the graph is directed; QKD links are undirected")


def _json_safe(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value



def _flat_graph(g: nx.Graph) -> nx.Graph:
    """A copy of ``g`` with scalar attributes only, for GraphML and GML."""
    h = nx.Graph()
    h.graph.update({k: v for k, v in g.graph.items() if isinstance(v, (str, int, float, bool))})
    for v, d in g.nodes(data=True):
        h.add_node(v, **_flat_attrs(d))
    for u, v, d in g.edges(data=True):
        h.add_edge(u, v, **_flat_attrs(d))
    return h


def _flat_attrs(d: dict) -> dict:
    """GraphML/GML take scalars only; positions become ``x``/``y``."""
    out = {}
    for k, v in d.items():
        v = _json_safe(v)
        if k == "pos" and isinstance(v, list) and len(v) == 2:
            out["x"], out["y"] = float(v[0]), float(v[1])
        elif isinstance(v, (str, int, float, bool)):
            out[k] = v
    return out

