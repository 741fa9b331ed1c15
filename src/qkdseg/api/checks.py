"""The checks of a request: its network and end nodes, the algorithm's options, the level and the key size.

Each raises :class:`~qkdseg.errors.InvalidRequest` naming the fault, before
anything is routed.
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable, Iterable

import numpy as np

from ..errors import InvalidRequest
from ..network import Network
from ..routing import get_algorithm
from ..security.threshold import check_tolerate

#: Largest ``max_paths`` (the compiled kernels count paths in 32 bits); leave it out for no limit.
MAX_PATHS = 2**31 - 1


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


def _request_options(algorithm: str, algo, opts: dict, epsilon: float | None) -> None:
    """Add to ``opts`` what the algorithm takes from the request: a seeded one records the seed it used
    (its default when none is given), ``smr-level`` routes to the request's own ``epsilon``."""
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


def _check_level(epsilon: float | None, reconstruction: str | None, reconstruction_options: dict | None) -> str | None:
    """The reconstruction scheme to run: ``paper`` unless named, none without ``epsilon`` (which must then
    name none); ``epsilon`` must be a probability."""
    if epsilon is None:
        if reconstruction is not None or reconstruction_options:
            msg = f"reconstruction {reconstruction or ''!s} needs a security level epsilon"
            raise InvalidRequest(msg.replace("  ", " "))
        return reconstruction
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating)) \
            or not 0.0 <= float(epsilon) <= 1.0:
        raise InvalidRequest(f"epsilon={epsilon!r} must be a probability in [0, 1]")
    return reconstruction or "paper"


#: The ways a part's pieces are joined (docs/model.md sections 4 and 4a).
SHARINGS = ("xor", "threshold")


def _check_sharing(sharing: object, tolerate: object, epsilon: float | None,
                   reconstruction: str | None) -> tuple[str, int, str | None]:
    """``(sharing, tolerate, reconstruction)`` after the checks: ``xor`` (the default, the paper's) with
    ``tolerate`` 0, or ``threshold`` with ``tolerate >= 1``; threshold sharing reconstructs with ``xor-all``
    (the default there; the other schemes do not share yet)."""
    if sharing not in SHARINGS:
        raise InvalidRequest(f"sharing={sharing!r} must be one of {', '.join(SHARINGS)}")
    t = check_tolerate(tolerate)
    if sharing == "xor":
        if t:
            raise InvalidRequest(f"tolerate={t} needs sharing='threshold' (XOR needs every piece: it tolerates none)")
        return sharing, 0, reconstruction
    if t < 1:
        raise InvalidRequest("sharing='threshold' needs tolerate >= 1 (lost paths a part survives; 0 is XOR)")
    if epsilon is None:
        return sharing, t, reconstruction
    if reconstruction not in (None, "xor-all"):
        raise InvalidRequest(f"reconstruction {reconstruction} does not share yet: with sharing='threshold' use "
                             "xor-all (one part of all paths per segment)")
    return sharing, t, "xor-all"


def _check_parts(ids, segment_nodes, paths, tolerate: int) -> None:
    """Refuse a threshold route with a segment of ``m <= tolerate`` paths, naming the segment."""
    for j, seg in enumerate(paths):
        if len(seg) <= tolerate:
            a, b = ids[segment_nodes[j]], ids[segment_nodes[j + 1]]
            raise InvalidRequest(
                f"segment {j + 1} ({a!r} -> {b!r}) has {len(seg)} path{'s' if len(seg) != 1 else ''}: threshold "
                f"sharing with tolerate {tolerate} needs at least {tolerate + 1} (k = m - tolerate >= 1)"
            )


def _removed_links(arrays, block_bits: int | None) -> np.ndarray:
    """The links a route may not use: those whose pool is smaller than ``block_bits`` (checked: a positive
    integer), or empty when it is not given."""
    if block_bits is not None:
        if isinstance(block_bits, bool) or not isinstance(block_bits, (int, np.integer)) or block_bits < 1:
            raise InvalidRequest(f"block_bits={block_bits!r} must be a positive integer")
        return arrays.pool_bits < block_bits
    return arrays.pool_bits <= 0


def _removed_masks(network: Network, removed_nodes: Iterable[Hashable],
                   removed_links: Iterable[tuple[Hashable, Hashable]]) -> tuple[np.ndarray, np.ndarray]:
    """Node and link masks of :func:`~qkdseg.api.exdijkstra`'s ``removed_nodes`` and ``removed_links`` (ids,
    checked: known nodes, pairs that are links of ``network``)."""
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
    return rn, rl


def check_tolerate_fits(arrays, tolerate: int, flag: str = "tolerate", algorithm: str | None = None,
                        options: dict | None = None) -> None:
    """Refuse a threshold tolerance ``T`` that no segment can meet, every request refused (too few paths): k-of-m
    sharing needs ``m > T`` paths, and a segment's paths are link-disjoint, so it has at most as many as the
    smaller degree of its two ends (at most the network's second-highest degree); ``algorithm`` ``single`` routes
    one path a segment, and an algorithm's ``max_paths`` option at most that many."""
    if not tolerate:
        return
    degree = np.sort(np.bincount(np.concatenate([arrays.edge_u, arrays.edge_v]), minlength=arrays.n_nodes))
    most = int(degree[-2]) if len(degree) >= 2 else 0
    why = (f"no segment of this network has more than {most} paths (they are link-disjoint: at most the smaller "
           "degree of its two ends)")
    cap = (options or {}).get("max_paths")
    if algorithm == "single" or (isinstance(cap, int) and not isinstance(cap, bool) and cap < most):
        most = 1 if algorithm == "single" else cap
        why = ("--algorithm single routes one path a segment" if algorithm == "single" else
               f"the algorithm's max_paths={cap} allows at most {cap} paths a segment")
    if tolerate >= most:
        raise InvalidRequest(f"{flag} {tolerate}: {why}, and threshold sharing needs at least T + 1 = "
                             f"{tolerate + 1}: every request would be refused; "
                             + (f"T must be below {most}" if most > 1 else "it needs an algorithm of several paths"))
