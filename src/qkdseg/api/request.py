"""Routing one request and evaluating it: :func:`route` (node ids) and :func:`route_indices` (node indices)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import replace
from typing import Any

from ..errors import InvalidRequest
from ..network import Network, NetworkArrays
from ..reconstruction import reconstruct
from ..reconstruction.xor_all import xor_all
from ..routing import get_algorithm
from ..security import route_security
from ..security.threshold import route_threshold_security
from .checks import (
    _check_level,
    _check_options,
    _check_parts,
    _check_request,
    _check_sharing,
    _removed_links,
    _request_options,
)
from .result import Route, Segment


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
    sharing: str = "xor",
    tolerate: int = 0,
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
    sharing : str
        How a part's pieces make its key: ``xor`` (default, the paper's: all
        are needed) or ``threshold`` (Shamir k-of-m over the part's ``m``
        paths, ``k = m - tolerate``; docs/model.md section 4a). With
        ``threshold`` the route's security is that of each segment's key
        shared over all its paths, and the reconstruction is ``xor-all``.
    tolerate : int
        ``threshold`` only: the lost paths a part survives, ``T >= 1``. A
        segment of ``m <= T`` paths is refused (:class:`InvalidRequest`
        naming it).
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
    _request_options(algorithm, algo, opts, epsilon)
    sharing, tolerate, reconstruction = _check_sharing(sharing, tolerate, epsilon, reconstruction)
    reconstruction = _check_level(epsilon, reconstruction, reconstruction_options)
    r = _route(network.arrays, algo, algorithm, source, destination, s, d, block_bits, opts, tolerate=tolerate)
    if epsilon is None:
        return r
    args = (network.arrays.p, [[list(p) for p in seg] for seg in r.index_paths],
            network.indices_of(r.segment_nodes[1:-1]), float(epsilon), r.block_bits)
    if tolerate:
        if reconstruction_options:
            given = ", ".join(sorted(reconstruction_options))
            raise InvalidRequest(f"reconstruction xor-all has no options (got {given})")
        rec = xor_all(*args, tolerate=tolerate)
    else:
        rec = reconstruct(reconstruction, *args, **(reconstruction_options or {}))
    return replace(r, reconstruction=rec)


def route_indices(
    arrays: NetworkArrays,
    source: int,
    destination: int,
    algorithm: str = "smr",
    *,
    block_bits: int | None = None,
    routed: tuple | None = None,
    tolerate: int = 0,
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

    ``tolerate = T > 0``: ``sharing="threshold"`` as in :func:`route` (security
    of k-of-m segment keys; an algorithm that picks paths for it is given it; a
    segment of ``m <= T`` paths raises :class:`InvalidRequest` naming it).
    """
    algo = get_algorithm(algorithm)
    opts = _check_options(algorithm, algo.options, options)
    tolerate = _check_sharing("threshold" if tolerate else "xor", tolerate, None, None)[1]
    ids = arrays.node_ids
    return _route(arrays, algo, algorithm, ids[source], ids[destination], source, destination, block_bits, opts, routed,
                  tolerate=tolerate)


def _route(arrays, algo, algorithm, source, destination, s, d, block_bits, opts, routed=None, *, tolerate=0) -> Route:
    removed_links = _removed_links(arrays, block_bits)
    info = None
    if routed is None:
        shares = {"tolerate": tolerate} if tolerate and algo.tolerates else {}
        out = algo.func(arrays, s, d, removed_links=removed_links, **shares, **opts)
        segment_nodes, paths = out[0], out[1]
        if len(out) == 3:  # smr-level: (segment_nodes, paths, what the full route would have taken)
            info = out[2]
    else:
        segment_nodes, paths = routed
    ids = arrays.node_ids
    blocked = not paths or any(len(seg) == 0 for seg in paths)
    shared_as = {"sharing": "threshold" if tolerate else "xor", "tolerate": tolerate}
    if blocked:
        return Route(algorithm, source, destination, (source, destination), (), 0.0, 0.0, 0, 0.0, 0, True, opts, (),
                     **shared_as)
    if tolerate:
        _check_parts(ids, segment_nodes, paths, tolerate)
    chain = segment_nodes[1:-1]
    hops = sum(len(p) - 1 for seg in paths for p in seg)
    b_bits = _block_bits(arrays, paths, block_bits)
    total_pool = arrays.total_pool_bits
    if tolerate:
        exact, independent, per_segment = route_threshold_security(arrays.p, paths, chain, tolerate)
    else:
        exact, independent, per_segment = route_security(arrays.p, paths, chain)
    segments = tuple(
        Segment(ids[a], ids[b], tuple(tuple(ids[v] for v in p) for p in seg), sec)
        for (a, b), seg, sec in zip(zip(segment_nodes, segment_nodes[1:]), paths, per_segment)
    )
    consumed = hops * b_bits
    level = None if info is None else _level_record(opts, info, hops, b_bits)
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
        **shared_as,
    )


def _block_bits(arrays, paths: list, block_bits: int | None) -> int:
    """The key piece size B of a route on ``paths`` (node indices): ``block_bits`` when given, else the
    smallest pool on any link the route uses (docs/model.md section 4)."""
    if block_bits is not None:
        return int(block_bits)
    if arrays.uniform_pool_bits is not None:  # every link has the same pool
        return arrays.uniform_pool_bits
    links = [arrays.edge_index(a, b) for seg in paths for p in seg for a, b in zip(p, p[1:])]
    return int(arrays.pool_bits[links].min())


def _level_record(opts: dict, info: dict, hops: int, b_bits: int) -> dict:
    """``Route.level`` of an ``smr-level`` route: what it saved against the full route over the same chain."""
    return {"epsilon": float(opts["epsilon"]), "met": bool(info["met"]),
            "full_consumed_bits": int(info["full_hops"]) * b_bits,
            "saved_bits": (int(info["full_hops"]) - hops) * b_bits, "full_security": float(info["full_security"])}
