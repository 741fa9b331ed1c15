"""The public entry points: :func:`route` and :func:`exdijkstra`."""

from __future__ import annotations

import inspect
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .errors import InvalidRequest, NoPath
from .network import Network, NetworkArrays
from .reconstruction import Reconstruction, reconstruct
from .routing import get_algorithm
from .routing.paths import exdijkstra_indices, path_security
from .security import route_security


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
        Exact end-to-end security of ``xor-all`` (probability, docs/model.md section 6).
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
    reconstruction : Reconstruction or None
        The global keys at the requested level (docs/model.md section 4), present
        only when :func:`route` was given ``epsilon``.
    level : dict or None
        ``smr-level`` only: what the route saved against the full route over the
        same chain (``epsilon``, ``met``, ``full_consumed_bits``,
        ``saved_bits``, ``full_security``; bits at the route's ``block_bits``).

    For ``msp`` the JSON also carries ``security_claimed``: the independence
    formula MSP's own analysis uses, next to the exact ``security``.
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
    reconstruction: Reconstruction | None = field(default=None, compare=False)
    level: dict | None = field(default=None, compare=False)

    @property
    def paths(self) -> list[tuple]:
        """All paths, segment after segment."""
        return [p for seg in self.segments for p in seg.paths]

    def paths_frame(self, network: Network | None = None):
        """The paths as a pandas DataFrame, one row per path: ``segment`` and
        ``path`` (numbered from 1, as ``qkdseg route`` prints them), the
        segment's ``source`` and ``target``, ``nodes`` (ends included),
        ``relays`` (every relay, trusted ones included), ``hops`` and
        ``segment_security``; with ``network`` also ``psec``, the product of
        the relays' ``p``.

        >>> import qkdseg
        >>> net = qkdseg.example_network()
        >>> df = qkdseg.route(net, 0, 7).paths_frame(net)
        >>> list(df.columns), len(df) == len(qkdseg.route(net, 0, 7).paths)
        (['segment', 'path', 'source', 'target', 'nodes', 'relays', 'hops', 'segment_security', 'psec'], True)
        """
        import pandas as pd

        rows = []
        for j, seg in enumerate(self.segments, 1):
            for k, path in enumerate(seg.paths, 1):
                row = {"segment": j, "path": k, "source": seg.source, "target": seg.target, "nodes": tuple(path),
                       "relays": len(path) - 2, "hops": len(path) - 1, "segment_security": seg.security}
                if network is not None:
                    psec = 1.0
                    for v in path[1:-1]:
                        psec *= network.p(v)
                    row["psec"] = psec
                rows.append(row)
        cols = ["segment", "path", "source", "target", "nodes", "relays", "hops", "segment_security"]
        return pd.DataFrame(rows, columns=cols + (["psec"] if network is not None else []))

    def plot(self, network: Network, path, *, seed: int = 0, title: str | None = None):
        """Draw this route on ``network`` to an image file (``.png``, ``.svg`` or ``.pdf``), as ``qkdseg route
        --plot`` does: segment nodes marked, each segment's paths in one colour. Returns the file's path.

        >>> import qkdseg, tempfile, pathlib
        >>> net = qkdseg.example_network()
        >>> out = qkdseg.route(net, 0, 7).plot(net, pathlib.Path(tempfile.mkdtemp()) / "route.png")
        >>> out.suffix, out.stat().st_size > 0
        ('.png', True)
        """
        from .plot import plot_route

        return plot_route(network, self, path, seed=seed, title=title)

    @property
    def hops(self) -> int:
        """Total hops over all paths."""
        return sum(len(p) - 1 for p in self.paths)

    @property
    def key_bits(self) -> int | None:
        """Key length at level epsilon, bits (``None`` without a reconstruction)."""
        return None if self.reconstruction is None else self.reconstruction.key_bits

    @property
    def consumed_bits_per_key_bit(self) -> float | None:
        """Consumed bits per delivered key bit (``None`` when no key bit is delivered)."""
        kb = self.key_bits
        return self.consumed_bits / kb if kb else None

    def metrics(self) -> dict[str, Any]:
        """The metrics of one request (docs/model.md section 6).

        ``security`` (end-to-end, exact, xor-all), ``consumed_bits``,
        ``key_consumption_rate`` (consumed / the network's pool bits), and
        ``blocked``; with a reconstruction also ``epsilon``, ``key_bits`` (key
        length at epsilon), ``global_keys`` and ``consumed_bits_per_key_bit``
        (``None`` when no key is delivered).

        >>> from qkdseg import example_network, route
        >>> m = route(example_network(), 0, 7, epsilon=0.8).metrics()
        >>> m["key_bits"], m["consumed_bits"], m["consumed_bits_per_key_bit"], m["blocked"]
        (100000, 1200000, 12.0, False)
        """
        out: dict[str, Any] = {
            "security": self.security,
            "consumed_bits": self.consumed_bits,
            "key_consumption_rate": self.key_consumption_rate,
            "blocked": self.blocked,
        }
        if self.reconstruction is not None:
            out.update(
                scheme=self.reconstruction.scheme,
                epsilon=self.reconstruction.epsilon,
                key_bits=self.key_bits,
                global_keys=self.reconstruction.n_keys,
                consumed_bits_per_key_bit=self.consumed_bits_per_key_bit,
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract of docs/json.md (node ids as in the input)."""
        out = self._base_dict()
        if self.algorithm == "msp":
            out["security_claimed"] = self.security_independent
        if self.reconstruction is not None:
            rec = self.reconstruction.to_dict()
            rec["consumed_bits_per_key_bit"] = self.consumed_bits_per_key_bit
            out["reconstruction"] = rec
        return out

    def _base_dict(self) -> dict[str, Any]:
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
            **({"level": dict(self.level)} if self.level is not None else {}),
        }


def _check_request(network: Network, source: Hashable, destination: Hashable) -> tuple[int, int]:
    if not isinstance(network, Network):
        hint = f"; load it first, e.g. qkdseg.load({network!r})" if isinstance(network, str) else ""
        raise InvalidRequest(f"network must be a qkdseg.Network, got {type(network).__name__}{hint}")
    network.check_node(source)
    network.check_node(destination)
    if source == destination:
        raise InvalidRequest(f"source and destination are the same node {source!r}")
    idx = network.arrays.index
    return idx[source], idx[destination]


#: Largest ``max_paths`` (the compiled kernels count paths in 32 bits); leave it out for no limit.
MAX_PATHS = 2**31 - 1


def _check_options(name: str, known: dict, options: dict) -> dict:
    for key in options:
        if key not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise InvalidRequest(f"algorithm {name!r} has no option {key!r} (options: {allowed})")
    out = dict(options)
    mp = out.get("max_paths")
    if mp is not None and (isinstance(mp, bool) or not isinstance(mp, (int, np.integer)) or not 1 <= mp <= MAX_PATHS):
        raise InvalidRequest(f"max_paths={mp!r} must be a positive integer, at most {MAX_PATHS} (None: no limit)")
    # None is a value, not "leave it out": it is dropped only where the function's own default is None
    # (so the record stays as before); elsewhere (smr-exact's candidates=None: all) it is passed on.
    defaults = _defaults(name, known)
    return {k: v for k, v in out.items() if v is not None or defaults.get(k, _NO_DEFAULT) is not None}


_NO_DEFAULT = object()
_DEFAULTS: dict[str, dict] = {}


def _defaults(name: str, known: dict) -> dict:
    """The registered algorithm's option defaults, from its signature (cached)."""
    if name not in _DEFAULTS:
        params = inspect.signature(get_algorithm(name).func).parameters
        _DEFAULTS[name] = {k: params[k].default for k in known if k in params}
    return _DEFAULTS[name]


def route(
    network: Network,
    source: Hashable,
    destination: Hashable,
    algorithm: str = "smr",
    *,
    block_bits: int | None = None,
    epsilon: float | None = None,
    reconstruction: str | None = None,
    reconstruction_options: dict | None = None,
    **options: Any,
) -> Route:
    """Route a key request and evaluate it (docs/model.md sections 3, 5, 6).

    Parameters
    ----------
    network : Network
    source, destination : node id
        Ids exactly as in the network.
    algorithm : str
        A name from ``qkdseg.ALGORITHMS`` (``smr``, ``disjoint``, ``single``...).
    block_bits : int, optional
        Size B of each key piece, bits. Links whose pool is smaller are not
        used. Default: the smallest pool on any link the route uses (docs/model.md
        section 4 [choice]); links with an empty pool are not used.
    epsilon : float, optional
        The requested security level in [0, 1]. When given, the route's key
        pieces are reconstructed into global keys that each meet it
        (``Route.reconstruction``, docs/model.md section 4). Without it no
        reconstruction is done and the result is as before.
    reconstruction : str, optional
        ``paper`` (default), ``optimal``, ``reuse`` or ``xor-all``
        (:data:`qkdseg.reconstruction.SCHEMES`). Needs ``epsilon``.
    reconstruction_options : dict, optional
        Options of the scheme, e.g. ``{"time_limit": 2.0}`` for ``optimal``.
    **options
        Algorithm options, e.g. ``max_paths`` and ``metric`` for SMR,
        ``seed`` and ``beta`` for MSP.

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
    >>> r = route(example_network(), 0, 7, epsilon=0.5, reconstruction="paper")
    >>> r.reconstruction.n_keys, r.key_bits, [round(k.security, 4) for k in r.reconstruction.global_keys]
    (2, 200000, [0.512, 0.512])
    """
    algo = get_algorithm(algorithm)
    s, d = _check_request(network, source, destination)
    opts = _check_options(algorithm, algo.options, options)
    if "seed" in algo.options and "seed" not in opts:
        # A seeded algorithm records the seed it used, given or not.
        default = inspect.signature(algo.func).parameters["seed"].default
        opts["seed"] = default
    if "epsilon" in algo.options:  # smr-level: the algorithm routes to the request's own level
        if "epsilon" in opts:
            raise InvalidRequest(f"{algorithm}'s epsilon is the request's epsilon; do not pass it twice")
        if epsilon is None:
            raise InvalidRequest(f"{algorithm} needs a security level: give epsilon (the request's level)")
        opts["epsilon"] = epsilon
    if epsilon is None:
        if reconstruction is not None or reconstruction_options:
            raise InvalidRequest(f"reconstruction {reconstruction or ''!s} needs a security level epsilon".replace("  ", " "))
    else:
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating)) or not 0.0 <= float(epsilon) <= 1.0:
            raise InvalidRequest(f"epsilon={epsilon!r} must be a probability in [0, 1]")
        reconstruction = reconstruction or "paper"
    r = _route(network.arrays, algo, algorithm, source, destination, s, d, block_bits, opts)
    if epsilon is None:
        return r
    rec = reconstruct(
        reconstruction,
        network.arrays.p,
        [[list(p) for p in seg] for seg in r.index_paths],
        network.indices_of(r.segment_nodes[1:-1]),
        float(epsilon),
        r.block_bits,
        **(reconstruction_options or {}),
    )
    return replace(r, reconstruction=rec)


def route_indices(
    arrays: NetworkArrays,
    source: int,
    destination: int,
    algorithm: str = "smr",
    *,
    block_bits: int | None = None,
    routed: tuple | None = None,
    **options: Any,
) -> Route:
    """:func:`route` on node *indices* of a frozen array form, for sweeps.

    No reconstruction and no id checks: the caller passes valid, distinct
    indices (``0 <= source, destination < n``). Options are checked as in
    :func:`route`; a seeded algorithm (``msp``) needs its ``seed`` given,
    and ``smr-level`` its level as the option ``epsilon``.
    The result's ids are ``arrays.node_ids``.

    ``routed = (segment_nodes, paths)`` (node indices, as the registry's
    functions return them) skips the routing and only evaluates those paths
    on ``arrays``: for a sweep that knows the routing cannot have changed
    (same links and trusted relays, only ``p`` differs, and an algorithm
    whose choices do not depend on ``p``). ``Route.index_paths`` and
    ``Route.segment_nodes`` of an earlier result give it.
    """
    algo = get_algorithm(algorithm)
    opts = _check_options(algorithm, algo.options, options)
    ids = arrays.node_ids
    return _route(arrays, algo, algorithm, ids[source], ids[destination], source, destination, block_bits, opts, routed)


def _route(arrays, algo, algorithm, source, destination, s, d, block_bits, opts, routed=None) -> Route:
    if block_bits is not None:
        if isinstance(block_bits, bool) or not isinstance(block_bits, (int, np.integer)) or block_bits < 1:
            raise InvalidRequest(f"block_bits={block_bits!r} must be a positive integer")
        removed_links = arrays.pool_bits < block_bits
    else:
        removed_links = arrays.pool_bits <= 0
    info = None
    if routed is None:
        out = algo.func(arrays, s, d, removed_links=removed_links, **opts)
        segment_nodes, paths = out[0], out[1]
        if len(out) == 3:  # smr-level: (segment_nodes, paths, what the full route would have taken)
            info = out[2]
    else:
        segment_nodes, paths = routed
    ids = arrays.node_ids
    blocked = not paths or any(len(seg) == 0 for seg in paths)
    if blocked:
        return Route(algorithm, source, destination, (source, destination), (), 0.0, 0.0, 0, 0.0, 0, True, opts, ())
    chain = segment_nodes[1:-1]
    hops = sum(len(p) - 1 for seg in paths for p in seg)
    if block_bits is not None:
        b_bits = int(block_bits)
    elif arrays.uniform_pool_bits is not None:  # every link has the same pool
        b_bits = arrays.uniform_pool_bits
    else:
        links = [arrays.edge_index(a, b) for seg in paths for p in seg for a, b in zip(p, p[1:])]
        b_bits = int(arrays.pool_bits[links].min())
    total_pool = arrays.total_pool_bits
    exact, independent, per_segment = route_security(arrays.p, paths, chain)
    segments = tuple(
        Segment(ids[a], ids[b], tuple(tuple(ids[v] for v in p) for p in seg), sec)
        for (a, b), seg, sec in zip(zip(segment_nodes, segment_nodes[1:]), paths, per_segment)
    )
    consumed = hops * b_bits
    level = None
    if info is not None:
        level = {"epsilon": float(opts["epsilon"]), "met": bool(info["met"]),
                 "full_consumed_bits": int(info["full_hops"]) * b_bits,
                 "saved_bits": (int(info["full_hops"]) - hops) * b_bits, "full_security": float(info["full_security"])}
    return Route(
        algorithm=algorithm,
        source=source,
        destination=destination,
        segment_nodes=tuple(ids[v] for v in segment_nodes),
        segments=segments,
        security=exact,
        security_independent=independent,
        consumed_bits=consumed,
        key_consumption_rate=consumed / total_pool if total_pool else 0.0,
        block_bits=b_bits,
        blocked=False,
        options=opts,
        index_paths=tuple(tuple(tuple(p) for p in seg) for seg in paths),
        level=level,
    )


def exdijkstra(
    network: Network,
    source: Hashable,
    destination: Hashable,
    *,
    removed_nodes: Iterable[Hashable] = (),
    removed_links: Iterable[tuple[Hashable, Hashable]] = (),
) -> list:
    """The most secure path between two nodes (ExDijkstra, docs/model.md section 3).

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
    try:
        removed_nodes, removed_links = list(removed_nodes), [tuple(link) for link in removed_links]
    except TypeError:
        raise InvalidRequest("removed_nodes must be node ids and removed_links pairs of node ids") from None
    for v in removed_nodes:
        rn[arrays.index[network.check_node(v)]] = True
    rl = np.zeros(arrays.n_links, dtype=bool)
    for link in removed_links:
        if len(link) != 2:
            raise InvalidRequest(f"removed link {link!r} must be a pair of node ids")
        u, v = link
        k = arrays.edge_index(arrays.index[network.check_node(u)], arrays.index[network.check_node(v)])
        if k < 0:
            raise InvalidRequest(f"link ({u!r}, {v!r}) is not in network {network.name!r}")
        rl[k] = True
    path = exdijkstra_indices(arrays, s, d, rn, rl)
    if path is None:
        raise NoPath(f"no usable path from {source!r} to {destination!r}")
    return [arrays.node_ids[v] for v in path]


__all__ = ["Route", "Segment", "exdijkstra", "path_security", "route", "route_indices"]
