"""The public entry points: :func:`route` and :func:`exdijkstra`."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidRequest, NoPath
from .network import Network
from .routing import get_algorithm
from .routing.paths import exdijkstra_indices, path_security
from .security import exact_security, independent_security


@dataclass(frozen=True)
class Segment:
    """One segment of a route: its trusted end nodes and its paths.

    Attributes
    ----------
    source, target : node id
    paths : tuple of tuples of node ids
        Ends included, in the order they were found.
    security : float
        Exact probability that the segment key (XOR of all its pieces) stays
        secret.
    """

    source: Hashable
    target: Hashable
    paths: tuple
    security: float

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "target": self.target,
            "paths": [list(p) for p in self.paths],
            "security": self.security,
        }


@dataclass(frozen=True)
class Route:
    """The result of :func:`route`; immutable. JSON contract: docs/json.md.

    Attributes
    ----------
    algorithm : str
    source, destination : node id
    segment_nodes : tuple
        ``(source, t1, ..., destination)``.
    segments : tuple of Segment
    security : float
        Exact end-to-end security of ``xor-all`` (probability, MODEL.md 6).
    security_independent : float
        The textbook formula, which assumes no shared relay.
    consumed_bits : int
        Sum over paths of hops x ``block_bits`` (bits).
    key_consumption_rate : float
        ``consumed_bits`` / the network's total pool bits.
    block_bits : int
        Size B of one key piece (bits).
    blocked : bool
        No path at all (security 0, nothing consumed).
    options : dict
        The algorithm options used.
    """

    algorithm: str
    source: Hashable
    destination: Hashable
    segment_nodes: tuple
    segments: tuple
    security: float
    security_independent: float
    consumed_bits: int
    key_consumption_rate: float
    block_bits: int
    blocked: bool
    options: dict = field(default_factory=dict, compare=False)
    index_paths: tuple = field(default=(), repr=False, compare=False)

    @property
    def paths(self) -> list[tuple]:
        """All paths, segment after segment."""
        return [p for seg in self.segments for p in seg.paths]

    @property
    def hops(self) -> int:
        """Total hops over all paths."""
        return sum(len(p) - 1 for p in self.paths)

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract of docs/json.md (node ids as in the input)."""
        return {
            "algorithm": self.algorithm,
            "source": self.source,
            "destination": self.destination,
            "segment_nodes": list(self.segment_nodes),
            "segments": [s.to_dict() for s in self.segments],
            "security": self.security,
            "security_independent": self.security_independent,
            "consumed_bits": self.consumed_bits,
            "key_consumption_rate": self.key_consumption_rate,
            "block_bits": self.block_bits,
            "blocked": self.blocked,
            "options": dict(self.options),
        }


def _check_request(network: Network, source: Hashable, destination: Hashable) -> tuple[int, int]:
    network.check_node(source)
    network.check_node(destination)
    if source == destination:
        raise InvalidRequest(f"source and destination are the same node {source!r}")
    idx = network.arrays.index
    return idx[source], idx[destination]


def _check_options(name: str, known: dict, options: dict) -> dict:
    for key in options:
        if key not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise InvalidRequest(f"algorithm {name!r} has no option {key!r} (options: {allowed})")
    out = dict(options)
    mp = out.get("max_paths")
    if mp is not None and (isinstance(mp, bool) or not isinstance(mp, (int, np.integer)) or mp < 1):
        raise InvalidRequest(f"max_paths={mp!r} must be a positive integer or None")
    return {k: v for k, v in out.items() if v is not None}


def route(
    network: Network,
    source: Hashable,
    destination: Hashable,
    algorithm: str = "smr",
    *,
    block_bits: int | None = None,
    **options: Any,
) -> Route:
    """Route a key request and evaluate it (MODEL.md sections 3, 5, 6).

    Parameters
    ----------
    network : Network
    source, destination : node id
        Ids exactly as in the network.
    algorithm : str
        A name from ``qkdseg.ALGORITHMS`` (``smr``, ``disjoint``, ``single``...).
    block_bits : int, optional
        Size B of each key piece, bits. Links whose pool is smaller are not
        used. Default: the smallest pool on any link the route uses (MODEL.md
        section 4 [choice]); links with an empty pool are not used.
    **options
        Algorithm options, e.g. ``max_paths`` and ``metric`` for SMR.

    Returns
    -------
    Route
        Frozen; ``.to_dict()`` gives the JSON contract. A request with no path
        is returned with ``blocked=True``, not raised.

    Examples
    --------
    >>> from qkdseg import example_network, route
    >>> r = route(example_network(), 0, 7)
    >>> r.segment_nodes
    (0, 3, 4, 7)
    >>> [len(s.paths) for s in r.segments], round(r.security, 6)
    ([2, 2, 2], 0.884736)
    >>> r.consumed_bits, r.blocked
    (1200000, False)
    """
    algo = get_algorithm(algorithm)
    s, d = _check_request(network, source, destination)
    opts = _check_options(algorithm, algo.options, options)
    arrays = network.arrays
    if block_bits is not None:
        if isinstance(block_bits, bool) or not isinstance(block_bits, (int, np.integer)) or block_bits < 1:
            raise InvalidRequest(f"block_bits={block_bits!r} must be a positive integer")
        removed_links = arrays.pool_bits < block_bits
    else:
        removed_links = arrays.pool_bits <= 0
    segment_nodes, paths = algo.func(arrays, s, d, removed_links=removed_links, **opts)
    ids = arrays.node_ids
    blocked = not paths or any(len(seg) == 0 for seg in paths)
    if blocked:
        return Route(algorithm, source, destination, (source, destination), (), 0.0, 0.0, 0, 0.0, 0, True, opts, ())
    chain = segment_nodes[1:-1]
    links = [arrays.edge_index(a, b) for seg in paths for p in seg for a, b in zip(p, p[1:])]
    b_bits = int(block_bits) if block_bits is not None else int(arrays.pool_bits[links].min())
    hops = len(links)
    total_pool = int(arrays.pool_bits.sum())
    segments = tuple(
        Segment(
            ids[a],
            ids[b],
            tuple(tuple(ids[v] for v in p) for p in seg),
            exact_security(arrays.p, [seg]),
        )
        for (a, b), seg in zip(zip(segment_nodes, segment_nodes[1:]), paths)
    )
    consumed = hops * b_bits
    return Route(
        algorithm=algorithm,
        source=source,
        destination=destination,
        segment_nodes=tuple(ids[v] for v in segment_nodes),
        segments=segments,
        security=exact_security(arrays.p, paths, chain),
        security_independent=independent_security(arrays.p, paths, chain),
        consumed_bits=consumed,
        key_consumption_rate=consumed / total_pool if total_pool else 0.0,
        block_bits=b_bits,
        blocked=False,
        options=opts,
        index_paths=tuple(tuple(tuple(p) for p in seg) for seg in paths),
    )


def exdijkstra(
    network: Network,
    source: Hashable,
    destination: Hashable,
    *,
    removed_nodes: Iterable[Hashable] = (),
    removed_links: Iterable[tuple[Hashable, Hashable]] = (),
) -> list:
    """The most secure path between two nodes (ExDijkstra, MODEL.md section 3).

    Maximises the product of the relays' ``p``; ties go to fewer hops, then
    to the smallest node index. The end nodes are not charged.

    Parameters
    ----------
    network : Network
    source, destination : node id
    removed_nodes : iterable of node ids
        Nodes that may not relay.
    removed_links : iterable of (u, v)
        Links that may not be used.

    Returns
    -------
    list
        Node ids from ``source`` to ``destination``.

    Raises
    ------
    NoPath
        When no usable path exists.

    Examples
    --------
    >>> from qkdseg import example_network
    >>> net = example_network()
    >>> exdijkstra(net, 0, 7)
    [0, 1, 3, 5, 4, 8, 7]
    >>> exdijkstra(net, 0, 7, removed_nodes=[1, 5, 8])
    [0, 2, 3, 6, 4, 9, 7]
    """
    s, d = _check_request(network, source, destination)
    arrays = network.arrays
    rn = np.zeros(arrays.n_nodes, dtype=bool)
    for v in removed_nodes:
        rn[arrays.index[network.check_node(v)]] = True
    rl = np.zeros(arrays.n_links, dtype=bool)
    for u, v in removed_links:
        k = arrays.edge_index(arrays.index[network.check_node(u)], arrays.index[network.check_node(v)])
        if k < 0:
            raise InvalidRequest(f"link ({u!r}, {v!r}) is not in network {network.name!r}")
        rl[k] = True
    path = exdijkstra_indices(arrays, s, d, rn, rl)
    if path is None:
        raise NoPath(f"no usable path from {source!r} to {destination!r}")
    return [arrays.node_ids[v] for v in path]


__all__ = ["Route", "Segment", "exdijkstra", "path_security", "route"]
