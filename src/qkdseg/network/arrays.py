"""The frozen array form of a network (CSR adjacency, node and link arrays), what the hot loops run on."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from functools import cached_property

import networkx as nx
import numpy as np

from .values import COST_SCALE


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
    def capacity_bits(self) -> np.ndarray:
        """Each link's full pool, bits: ``pool_bits``, or, on a view of
        :func:`~qkdseg.keys.levels.with_levels`, the pools it replaced by
        current levels (so ``pool_bits / capacity_bits`` is the share left)."""
        return self.pool_bits

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

        from ..errors import InvalidRequest

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
