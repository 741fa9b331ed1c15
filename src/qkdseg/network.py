"""The network model (docs/model.md section 1) and its frozen array form.

A :class:`Network` wraps a :class:`networkx.Graph` whose nodes carry

- ``trusted`` (bool): a trusted relay;
- ``p`` (float in [0, 1]): the probability that the node is *not*
  compromised. Trusted nodes default to ``p = 1``;

and whose links carry

- ``pool_bits`` (int >= 0, default 100 000): the key pool shared by its ends;
- optionally ``rate_bps`` (key generation rate, bit/s) and ``length_km``.

The network is validated once, when it is built, and is immutable afterwards.
The hot loops (routing, security evaluation) never touch the networkx graph:
they run on :attr:`Network.arrays`, a frozen CSR form built once and cached.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import networkx as nx
import numpy as np

from .errors import NetworkError, NodeNotFound

#: Default key pool of a link in bits (the paper's 100 kb).
DEFAULT_POOL_BITS = 100_000

#: Node costs ``-log p`` are rounded to multiples of ``1 / COST_SCALE``. Sums of
#: such numbers are exact in float64 (up to 2**21), so equal products give
#: exactly equal path costs whatever the order of addition, and the hop
#: tie-break of ExDijkstra is never decided by rounding noise. Paths whose
#: security differs by less than about 1e-9 (relative) count as equally secure.
COST_SCALE = float(2**32)

#: Largest key pool of one link, bits (2**40, about 137 GB of key). Larger
#: values are rejected: sums over a million links must stay exact in int64.
MAX_POOL_BITS = 2**40

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}


def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise NetworkError(f"{where}: field 'trusted' must be a boolean, got {value!r}")


def _as_float(value: Any, where: str, field: str) -> float:
    if isinstance(value, (bool, np.bool_)):
        raise NetworkError(f"{where}: field '{field}' must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        raise NetworkError(f"{where}: field '{field}' must be a number, got {_short(value)}") from None
    if math.isnan(out):
        raise NetworkError(f"{where}: field '{field}' is NaN")
    if math.isinf(out):
        raise NetworkError(f"{where}: field '{field}' is infinite")
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_probability(value: Any, what: str, error: type = NetworkError) -> float:
    """``value`` as a float in [0, 1], or ``error`` naming ``what``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise error(f"{what}={_short(value)} must be a probability in [0, 1]")
    out = float(value)
    if not 0.0 <= out <= 1.0:  # NaN fails too
        raise error(f"{what}={_short(value)} is outside [0, 1]")
    return out


def check_count(value: Any, what: str, *, minimum: int = 0, maximum: int | None = None, error: type = NetworkError) -> int:
    """``value`` as an int in ``[minimum, maximum]``, or ``error`` naming ``what``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise error(f"{what}={_short(value)} must be a whole number")
    if maximum is not None and not minimum <= value <= maximum:
        raise error(f"{what}={_short(value)} must lie in [{minimum}, {maximum}]")
    if value < minimum:
        raise error(f"{what}={_short(value)} must be at least {minimum}")
    return int(value)


@dataclass(frozen=True, eq=False)
class NetworkArrays:
    """Immutable array form of a :class:`Network`, what the hot loops run on.

    Nodes are numbered ``0..n-1`` in the network's node order; links
    ``0..m-1`` in its edge order. The adjacency is CSR: the neighbours of node
    ``u`` are ``indices[indptr[u]:indptr[u+1]]`` (sorted by index) and the
    link joining them is ``edge_of`` at the same positions.

    Attributes
    ----------
    node_ids : tuple
        The original node ids, by index.
    index : Mapping
        Node id -> index.
    indptr, indices, edge_of : numpy.ndarray of int64
        CSR adjacency (both directions of every link).
    edge_u, edge_v : numpy.ndarray of int64
        Endpoints of each link, ``edge_u < edge_v``.
    p : numpy.ndarray of float64
        Security probability of each node (1 for trusted nodes by default).
    cost : numpy.ndarray of float64
        ``-log(p)`` rounded to a multiple of ``1/COST_SCALE`` (so that sums
        are exact); ``inf`` where ``p == 0`` (an unusable relay).
    trusted : numpy.ndarray of bool
        Trusted-relay flag of each node.
    pool_bits : numpy.ndarray of int64
        Key pool of each link, bits.
    length_km : numpy.ndarray of float64
        Length of each link in km, NaN where unknown.
    """

    node_ids: tuple
    index: Mapping[Hashable, int]
    indptr: np.ndarray
    indices: np.ndarray
    edge_of: np.ndarray
    edge_u: np.ndarray
    edge_v: np.ndarray
    p: np.ndarray
    cost: np.ndarray
    trusted: np.ndarray
    pool_bits: np.ndarray
    length_km: np.ndarray

    @property
    def n_nodes(self) -> int:
        return len(self.node_ids)

    @property
    def n_links(self) -> int:
        return len(self.edge_u)

    @cached_property
    def total_pool_bits(self) -> int:
        """Sum of all link pools, bits."""
        return int(self.pool_bits.sum())

    @cached_property
    def uniform_pool_bits(self) -> int | None:
        """The pool every link has, bits, or ``None`` when pools differ."""
        if self.pool_bits.size and self.pool_bits.min() == self.pool_bits.max():
            return int(self.pool_bits[0])
        return None

    @cached_property
    def hop_matrix(self):
        """``scipy.sparse`` adjacency with unit weights (for hop distances)."""
        from scipy.sparse import csr_matrix

        n = self.n_nodes
        return csr_matrix((np.ones(self.indices.size), self.indices, self.indptr), shape=(n, n))

    @cached_property
    def length_matrix(self):
        """``scipy.sparse`` adjacency weighted by ``length_km``.

        Raises :class:`~qkdseg.errors.InvalidRequest` naming the first link
        without a length.
        """
        from scipy.sparse import csr_matrix

        from .errors import InvalidRequest

        missing = np.flatnonzero(np.isnan(self.length_km))
        if missing.size:
            k = int(missing[0])
            u, v = self.node_ids[self.edge_u[k]], self.node_ids[self.edge_v[k]]
            raise InvalidRequest(f"metric 'length' needs length_km on every link; link ({u!r}, {v!r}) has none")
        # csgraph treats explicit zeros as missing links; keep zero-length links usable.
        w = np.maximum(self.length_km[self.edge_of], 1e-12)
        n = self.n_nodes
        return csr_matrix((w, self.indices, self.indptr), shape=(n, n))

    @cached_property
    def _csr_lists(self) -> tuple[list, list, list]:
        """``indptr``, ``indices``, ``edge_of`` as Python lists, for per-link lookups."""
        return self.indptr.tolist(), self.indices.tolist(), self.edge_of.tolist()

    def edge_index(self, u: int, v: int) -> int:
        """Index of the link joining node indices ``u`` and ``v`` (-1 if none)."""
        indptr, indices, edge_of = self._csr_lists
        lo, hi = indptr[u], indptr[u + 1]
        pos = bisect_left(indices, v, lo, hi)
        if pos < hi and indices[pos] == v:
            return edge_of[pos]
        return -1


def _build_arrays(graph: nx.Graph) -> NetworkArrays:
    node_ids = tuple(graph.nodes)
    index = {node: i for i, node in enumerate(node_ids)}
    edges = list(graph.edges(data=True))
    m = len(edges)
    eu = np.empty(m, dtype=np.int64)
    ev = np.empty(m, dtype=np.int64)
    pool = np.empty(m, dtype=np.int64)
    length = np.full(m, np.nan)
    for k, (a, b, data) in enumerate(edges):
        i, j = index[a], index[b]
        eu[k], ev[k] = min(i, j), max(i, j)
        pool[k] = data["pool_bits"]
        if data.get("length_km") is not None:
            length[k] = data["length_km"]
    p = np.array([graph.nodes[v]["p"] for v in node_ids], dtype=np.float64)
    trusted = np.array([graph.nodes[v]["trusted"] for v in node_ids], dtype=bool)
    return arrays_from_edges(eu, ev, p, trusted, pool, length, node_ids=node_ids, index=index)


def arrays_from_edges(
    edge_u: np.ndarray,
    edge_v: np.ndarray,
    p: np.ndarray,
    trusted: np.ndarray,
    pool_bits: np.ndarray,
    length_km: np.ndarray | None = None,
    *,
    node_ids: tuple | None = None,
    index: Mapping[Hashable, int] | None = None,
) -> NetworkArrays:
    """Build the frozen array form straight from arrays, without networkx.

    For sweeps that draw thousands of topologies: the caller guarantees a
    valid simple graph (no self-loop, no duplicate link, ``p`` in [0, 1],
    pools >= 0). Nodes are ``0..n-1`` (``n = len(p)``) unless ``node_ids``
    is given.

    Parameters
    ----------
    edge_u, edge_v : int arrays of length m
        Link endpoints (node indices).
    p : float array of length n
        Security probability of each node.
    trusted : bool array of length n
    pool_bits : int array of length m, bits
    length_km : float array of length m, optional (NaN = unknown)
    """
    n = len(p)
    m = len(edge_u)
    eu = np.minimum(edge_u, edge_v).astype(np.int64)
    ev = np.maximum(edge_u, edge_v).astype(np.int64)
    if node_ids is None:
        node_ids = tuple(range(n))
        index = {i: i for i in range(n)}
    # CSR with both directions; sort by (row, neighbour) so neighbour order is canonical.
    rows = np.concatenate([eu, ev])
    cols = np.concatenate([ev, eu])
    eid = np.concatenate([np.arange(m), np.arange(m)])
    order = np.lexsort((cols, rows))
    rows, cols, eid = rows[order], cols[order], eid[order]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.add.at(indptr, rows + 1, 1)
    np.cumsum(indptr, out=indptr)
    p = np.asarray(p, dtype=np.float64).copy()
    with np.errstate(divide="ignore"):
        cost = np.round(-np.log(p) * COST_SCALE) / COST_SCALE
    cost[cost == 0.0] = 0.0  # normalise -0.0
    trusted = np.asarray(trusted, dtype=bool).copy()
    pool = np.asarray(pool_bits, dtype=np.int64).copy()
    length = np.full(m, np.nan) if length_km is None else np.asarray(length_km, dtype=np.float64).copy()
    cols = cols.astype(np.int64)
    eid = eid.astype(np.int64)
    for a in (indptr, cols, eid, eu, ev, p, cost, trusted, pool, length):
        a.setflags(write=False)
    return NetworkArrays(
        node_ids=node_ids,
        index=index,
        indptr=indptr,
        indices=cols,
        edge_of=eid,
        edge_u=eu,
        edge_v=ev,
        p=p,
        cost=cost,
        trusted=trusted,
        pool_bits=pool,
        length_km=length,
    )


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


def _column(records: Sequence[Mapping], key: str, default: Any, allowed: set) -> list | None:
    col = [r.get(key, default) for r in records]
    return col if set(map(type, col)) <= allowed else None


def _float_column(col: list) -> tuple[np.ndarray, np.ndarray] | None:
    """Values (NaN where None) and the None mask; ``None`` if a value is NaN or infinite."""
    try:
        arr = np.array(col, dtype=np.float64)
    except (OverflowError, ValueError, TypeError):
        return None
    missing = np.isnan(arr)
    # Every None became NaN; any other NaN came from the data.
    if int(missing.sum()) != col.count(None) or np.isinf(arr).any():
        return None
    return arr, missing


def network_from_records(
    node_ids: Sequence[Hashable],
    index: Mapping[Hashable, int],
    node_attrs: Sequence[Mapping[str, Any]],
    link_u: np.ndarray,
    link_v: np.ndarray,
    link_attrs: Sequence[Mapping[str, Any]],
    *,
    graph_attrs: Mapping[str, Any],
    name: str,
    default_p: float | None = None,
    default_pool_bits: int = DEFAULT_POOL_BITS,
) -> "Network | None":
    """Validate records with array operations and build the network from them.

    The fast path for large files and generators. ``node_ids`` are distinct
    and ``index`` maps them to ``0..n-1``; ``link_u, link_v`` are the links'
    end indices in file order. Returns ``None`` when any value is not of the
    plain kinds this path handles (booleans for ``trusted``, numbers for
    ``p``, ``pool_bits``, ``rate_bps`` and ``length_km``) or breaks a rule
    (a self-loop, a duplicate link, a value out of range): the caller then
    builds the network with :class:`Network`, which accepts the same
    networks and names the fault. The result equals that network: same node
    and link order, same arrays, same graph.
    """
    if default_p is not None:
        default_p = check_probability(default_p, "default_p")
    number = {int, float}
    t_col = _column(node_attrs, "trusted", False, {bool})
    p_col = _column(node_attrs, "p", None, number | {type(None)})
    pool_col = _column(link_attrs, "pool_bits", default_pool_bits, number)
    if t_col is None or p_col is None or pool_col is None:
        return None
    trusted = np.array(t_col, dtype=bool)
    got = _float_column(p_col)
    if got is None:
        return None
    p, missing = got
    p[missing & trusted] = 1.0
    if (missing & ~trusted).any():
        if default_p is None:
            return None
        p[missing & ~trusted] = float(default_p)
    if not np.all((p >= 0.0) & (p <= 1.0)):
        return None
    got = _float_column(pool_col)
    if got is None or got[1].any():
        return None
    pool_f = got[0]
    if not np.all((pool_f >= 0) & (pool_f <= MAX_POOL_BITS) & (pool_f == np.floor(pool_f))):
        return None
    length = None
    for field in ("rate_bps", "length_km"):
        col = _column(link_attrs, field, None, number | {type(None)})
        got = None if col is None else _float_column(col)
        if got is None or (got[0] < 0).any():
            return None
        if field == "length_km":
            length = got[0]
    n = len(node_ids)
    lo = np.minimum(link_u, link_v).astype(np.int64)
    hi = np.maximum(link_u, link_v).astype(np.int64)
    keys = np.sort(lo * n + hi)
    if (lo == hi).any() or (keys[1:] == keys[:-1]).any():
        return None
    # networkx's edge order: by the earlier end in node order, then file order.
    order = np.argsort(lo, kind="stable")
    arrays = arrays_from_edges(
        lo[order], hi[order], p, trusted, pool_f.astype(np.int64)[order], length[order],
        node_ids=tuple(node_ids), index=index,
    )
    order_l = order.tolist()
    records = NetworkRecords(dict(graph_attrs), node_attrs, [link_attrs[k] for k in order_l])
    return Network.from_records(records, arrays, name=name)


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
        raise NodeNotFound(f"node {node!r} is not in network {self.name!r}")

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
