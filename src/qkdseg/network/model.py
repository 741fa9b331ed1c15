"""The :class:`Network` class (docs/model.md section 1)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import networkx as nx
import numpy as np

from ..errors import NetworkError, NodeNotFound
from .arrays import NetworkArrays, _build_arrays
from .values import DEFAULT_POOL_BITS, MAX_POOL_BITS, _as_bool, _as_float, _short, check_count, check_probability

_LINK_KEYS = ("source", "target", "key")


@dataclass(frozen=True, eq=False)
class NetworkRecords:
    """The records a large network was read or generated from.

    Kept so that :attr:`Network.graph` can be built on demand, equal to the
    graph :class:`Network` builds from the same data. ``node_attrs[i]`` is
    node ``i``'s raw record (an ``id`` key is skipped), ``edge_attrs[k]``
    link ``k``'s, in the array form's link order (``source``, ``target``
    and ``key`` are skipped).
    """

    graph_attrs: Mapping[str, Any]
    node_attrs: Sequence[Mapping[str, Any]]
    edge_attrs: Sequence[Mapping[str, Any]]

    def node_items(self, arrays: NetworkArrays) -> Iterator[tuple[Hashable, dict]]:
        """``(id, attributes)`` of every node, as :class:`Network` stores them."""
        ids = arrays.node_ids
        p, trusted = arrays.p.tolist(), arrays.trusted.tolist()
        for i, rec in enumerate(self.node_attrs):
            attrs = {a: v for a, v in rec.items() if a != "id"}
            attrs["trusted"] = trusted[i]
            attrs["p"] = p[i]
            yield ids[i], attrs

    def edge_items(self, arrays: NetworkArrays) -> Iterator[tuple[Hashable, Hashable, dict]]:
        """``(u, v, attributes)`` of every link in link order, as :class:`Network` stores them."""
        ids = arrays.node_ids
        pool, eu, ev = arrays.pool_bits.tolist(), arrays.edge_u.tolist(), arrays.edge_v.tolist()
        for k, rec in enumerate(self.edge_attrs):
            attrs = {a: w for a, w in rec.items() if a not in _LINK_KEYS}
            attrs["pool_bits"] = pool[k]
            for field in ("rate_bps", "length_km"):
                if attrs.get(field) is not None:
                    attrs[field] = float(attrs[field])
            yield ids[eu[k]], ids[ev[k]], attrs

    def build_graph(self, arrays: NetworkArrays) -> nx.Graph:
        g = nx.Graph()
        g.graph.update(self.graph_attrs)
        g.add_nodes_from(self.node_items(arrays))
        g.add_edges_from(self.edge_items(arrays))
        return g


class Network:
    """A partially-trusted relay QKD network (docs/model.md section 1).

    Parameters
    ----------
    graph : networkx.Graph
        Undirected simple graph. Node attributes ``trusted`` and ``p``; link
        attributes ``pool_bits``, ``rate_bps``, ``length_km``. The graph is
        copied; the copy is validated, normalised and frozen.
    default_p : float, optional
        Security probability given to untrusted nodes that carry no ``p``.
        Without it such a node is an error.
    default_pool_bits : int
        Pool of links that carry no ``pool_bits`` (bits, default 100 000).
    name : str, optional
        A label for reports.

    Raises
    ------
    NetworkError
        Naming the node or link at fault: ``p`` outside [0, 1], a negative
        pool, a self-loop, a directed or multi-graph, a missing ``p``.

    Examples
    --------
    >>> import networkx as nx
    >>> g = nx.path_graph(3)
    >>> nx.set_node_attributes(g, {0: True, 2: True}, "trusted")
    >>> net = Network(g, default_p=0.9)
    >>> net.n_nodes, net.n_links, net.p(1), net.is_trusted(0)
    (3, 2, 0.9, True)
    >>> Network(nx.Graph([(0, 0)]), default_p=0.9)
    Traceback (most recent call last):
    ...
    qkdseg.errors.NetworkError: link (0, 0): self-loop
    """

    def __init__(
        self,
        graph: nx.Graph,
        *,
        default_p: float | None = None,
        default_pool_bits: int = DEFAULT_POOL_BITS,
        name: str | None = None,
    ) -> None:
        if default_p is not None:
            default_p = check_probability(default_p, "default_p")
        default_pool_bits = check_count(default_pool_bits, "default_pool_bits", maximum=MAX_POOL_BITS)
        if not isinstance(graph, nx.Graph):
            raise NetworkError(f"network: expected a networkx graph, got {type(graph).__name__}")
        if graph.is_directed():
            raise NetworkError("network: links must be undirected (got a directed graph)")
        if graph.is_multigraph():
            for u, v, k in graph.edges(keys=True):
                if k not in (0, None) or graph.number_of_edges(u, v) > 1:
                    raise NetworkError(f"link ({u!r}, {v!r}): duplicate link")
            graph = nx.Graph(graph)
        g = nx.Graph()
        g.graph.update(graph.graph)
        for node, data in graph.nodes(data=True):
            where = f"node {node!r}"
            attrs = dict(data)
            trusted = _as_bool(attrs.get("trusted", False), where)
            if "p" in attrs and attrs["p"] is not None:
                p = _as_float(attrs["p"], where, "p")
            elif trusted:
                p = 1.0
            elif default_p is not None:
                p = float(default_p)
            else:
                raise NetworkError(f"{where}: missing field 'p' (the security probability); give it in the file or set a default p")
            if not 0.0 <= p <= 1.0:
                raise NetworkError(f"{where}: p={p!r} is outside [0, 1]")
            attrs["trusted"] = trusted
            attrs["p"] = p
            g.add_node(node, **attrs)
        for u, v, data in graph.edges(data=True):
            where = f"link ({u!r}, {v!r})"
            if u == v:
                raise NetworkError(f"{where}: self-loop")
            attrs = dict(data)
            pool = attrs.get("pool_bits", default_pool_bits)
            pool_f = _as_float(pool, where, "pool_bits")
            if pool_f < 0:
                raise NetworkError(f"{where}: negative pool_bits={pool!r}")
            if pool_f != int(pool_f):
                raise NetworkError(f"{where}: pool_bits={pool!r} is not a whole number of bits")
            if pool_f > MAX_POOL_BITS:
                raise NetworkError(f"{where}: pool_bits={_short(pool)} exceeds the largest pool, {MAX_POOL_BITS} bits")
            attrs["pool_bits"] = int(pool_f)
            for field in ("rate_bps", "length_km"):
                if attrs.get(field) is not None:
                    val = _as_float(attrs[field], where, field)
                    if val < 0:
                        raise NetworkError(f"{where}: negative {field}={attrs[field]!r}")
                    attrs[field] = val
            g.add_edge(u, v, **attrs)
        self._graph = nx.freeze(g)
        self._records: NetworkRecords | None = None
        self.name = name if name is not None else str(graph.graph.get("name", "network"))

    @classmethod
    def from_records(cls, records: "NetworkRecords", arrays: NetworkArrays, *, name: str) -> "Network":
        """A network built straight from validated records and their array form.

        For large networks: the networkx graph is built only when
        :attr:`graph` is first asked for, and equals the one :class:`Network`
        would have built from the same data. The caller (a reader or a
        generator) has validated everything :class:`Network` checks.
        """
        self = cls.__new__(cls)
        self._graph = None
        self._records = records
        self.__dict__["arrays"] = arrays
        self.name = name
        return self

    # -- views ---------------------------------------------------------------
    @property
    def graph(self) -> nx.Graph:
        """The validated, frozen networkx graph (the interchange form)."""
        if self._graph is None:
            self._graph = nx.freeze(self._records.build_graph(self.arrays))
        return self._graph

    @cached_property
    def arrays(self) -> NetworkArrays:
        """The frozen CSR form, built on first use and cached."""
        return _build_arrays(self._graph)

    @property
    def n_nodes(self) -> int:
        if self._graph is None:
            return self.arrays.n_nodes
        return self._graph.number_of_nodes()

    @property
    def n_links(self) -> int:
        if self._graph is None:
            return self.arrays.n_links
        return self._graph.number_of_edges()

    @property
    def nodes(self) -> list:
        if self._graph is None:
            return list(self.arrays.node_ids)
        return list(self._graph.nodes)

    def __contains__(self, node: Hashable) -> bool:
        if self._graph is None:
            try:
                return node in self.arrays.index
            except TypeError:
                return False
        return node in self._graph

    def __repr__(self) -> str:
        return (
            f"Network(name={self.name!r}, nodes={self.n_nodes}, links={self.n_links}, "
            f"trusted={len(self.trusted_nodes)})"
        )

    def p(self, node: Hashable) -> float:
        """Security probability of ``node`` (probability it is not compromised)."""
        if self._graph is None:
            return float(self.arrays.p[self.arrays.index[self.check_node(node)]])
        return self._graph.nodes[self.check_node(node)]["p"]

    def is_trusted(self, node: Hashable) -> bool:
        if self._graph is None:
            return bool(self.arrays.trusted[self.arrays.index[self.check_node(node)]])
        return self._graph.nodes[self.check_node(node)]["trusted"]

    @property
    def trusted_nodes(self) -> list:
        if self._graph is None:
            ids = self.arrays.node_ids
            return [ids[i] for i in np.flatnonzero(self.arrays.trusted).tolist()]
        return [v for v, t in self._graph.nodes(data="trusted") if t]

    @property
    def total_pool_bits(self) -> int:
        """Sum of all link pools, bits."""
        return int(self.arrays.pool_bits.sum())

    def check_node(self, node: Hashable) -> Hashable:
        """Return ``node`` if present, else raise :class:`NodeNotFound`."""
        if node in self:
            return node
        like = [v for v in self.nodes if str(v) == str(node)]
        hint = f" (its ids are {type(like[0]).__name__}: did you mean {like[0]!r}?)" if len(like) == 1 else ""
        raise NodeNotFound(f"node {node!r} is not in network {self.name!r}{hint}")

    def resolve(self, text: str) -> Hashable:
        """Match a node id typed on a command line against ids of either type.

        ``"5"`` matches the integer node ``5`` or the string node ``"5"``; if
        both exist the match is ambiguous and an error.
        """
        matches = [v for v in self.nodes if str(v) == text]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NodeNotFound(f"node {text!r} is not in network {self.name!r}")
        raise NodeNotFound(f"node {text!r} is ambiguous in network {self.name!r}: {matches!r}")

    def summary(self) -> dict[str, Any]:
        """Counts, mean degree and connectivity, for ``qkdseg topology show``."""
        if self._graph is None:
            return self._summary_from_arrays()
        g = self._graph
        n = g.number_of_nodes()
        untrusted_p = [d["p"] for _, d in g.nodes(data=True) if not d["trusted"]]
        lengths = [d["length_km"] for *_, d in g.edges(data=True) if d.get("length_km") is not None]
        return {
            "name": self.name,
            "nodes": n,
            "links": g.number_of_edges(),
            "trusted": len(self.trusted_nodes),
            "untrusted": n - len(self.trusted_nodes),
            "mean_degree": (2.0 * g.number_of_edges() / n) if n else 0.0,
            "connected": bool(n) and nx.is_connected(g),
            "components": nx.number_connected_components(g) if n else 0,
            "node_connectivity": nx.node_connectivity(g) if 0 < n <= 300 else None,
            "p_untrusted_min": min(untrusted_p) if untrusted_p else None,
            "p_untrusted_max": max(untrusted_p) if untrusted_p else None,
            "total_pool_bits": self.total_pool_bits,
            "total_length_km": sum(lengths) if lengths else None,
        }

    def _summary_from_arrays(self) -> dict[str, Any]:
        from scipy.sparse.csgraph import connected_components

        a = self.arrays
        n, m = a.n_nodes, a.n_links
        untrusted_p = a.p[~a.trusted]
        lengths = a.length_km[~np.isnan(a.length_km)].tolist()
        n_trusted = int(a.trusted.sum())
        components = int(connected_components(a.hop_matrix, directed=False, return_labels=False)) if n else 0
        return {
            "name": self.name,
            "nodes": n,
            "links": m,
            "trusted": n_trusted,
            "untrusted": n - n_trusted,
            "mean_degree": (2.0 * m / n) if n else 0.0,
            "connected": components == 1,
            "components": components,
            "node_connectivity": nx.node_connectivity(self.graph) if 0 < n <= 300 else None,
            "p_untrusted_min": float(untrusted_p.min()) if untrusted_p.size else None,
            "p_untrusted_max": float(untrusted_p.max()) if untrusted_p.size else None,
            "total_pool_bits": self.total_pool_bits,
            "total_length_km": sum(lengths) if lengths else None,
        }

    def with_nodes(self, updates: Mapping[Hashable, Mapping[str, Any]]) -> "Network":
        """A new network with node attributes updated (the original is untouched)."""
        g = nx.Graph(self.graph)
        for node, attrs in updates.items():
            g.nodes[self.check_node(node)].update(attrs)
        return Network(g, name=self.name)

    def indices_of(self, nodes: Iterable[Hashable]) -> list[int]:
        idx = self.arrays.index
        return [idx[self.check_node(v)] for v in nodes]
