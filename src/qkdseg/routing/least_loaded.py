"""``least-loaded``: a pool-aware baseline (issue 39; not in the paper).

Dynamic QKD routing work compares routers by their blocking ratio against
Dijkstra and against routers that steer traffic away from links whose key
pools run low. ``least-loaded`` is such a router, built like ``disjoint``
(docs/baselines.md) so that only the link weights differ:

- successive shortest paths source -> destination, each removing its
  untrusted relays and its links for the next ones (``disjoint``'s rule:
  the paths share no untrusted relay and no link; trusted relays, which no
  eavesdropper reads, may carry several);
- a path's cost is the sum over its links of ``1 / (f + c)``, ``f`` the
  share of the link's pool left (``pool_bits / capacity_bits``, in [0, 1])
  and ``c`` = :data:`DEFAULT_CONSTANT` (**[choice]**, docs/baselines.md): a
  full link costs ``1 / (1 + c)``, an emptying one up to ``1 / c``;
- relays with ``p = 0`` are unusable, as for ExDijkstra; the relays' ``p``
  is otherwise ignored, as the pool-aware routers of that literature do
  (they route over trusted relays only).

On full pools (a static request, ``qkdseg route``) every link costs the
same and the paths are least-hop paths. In the simulator and the key
service, which route on ``with_levels(arrays, level)``, the costs follow the
pools. Ties: fewer hops, then the smaller predecessor index (as ExDijkstra).

>>> from qkdseg import example_network, route
>>> r = route(example_network(), 0, 7, "least-loaded")
>>> [len(p) - 1 for p in r.paths]
[6, 6]
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidRequest
from ..network import COST_SCALE, NetworkArrays
from .paths import _exdijkstra_python, successive_paths
from .registry import register
from .smr import request_masks

#: ``c`` of the link cost ``1 / (f + c)``: a link with its pool nearly empty costs (1 + c) / c = 11 full links.
DEFAULT_CONSTANT = 0.1


def link_costs(arrays: NetworkArrays, constant: float = DEFAULT_CONSTANT) -> np.ndarray:
    """``1 / (f + constant)`` per link, ``f = pool_bits / capacity_bits`` clipped to [0, 1] (0 for an empty
    capacity), rounded to multiples of ``1 / COST_SCALE`` so that path sums are exact (ties are ties).

    >>> from qkdseg import example_network
    >>> from qkdseg.keys.levels import with_levels
    >>> a = example_network().arrays
    >>> level = a.pool_bits.copy(); level[0] = a.pool_bits[0] // 4
    >>> c = link_costs(with_levels(a, level))
    >>> round(float(c[0]), 4), round(float(c[1]), 4)
    (2.8571, 0.9091)
    """
    cap = np.asarray(arrays.capacity_bits, dtype=np.float64)
    share = np.divide(np.asarray(arrays.pool_bits, dtype=np.float64), cap, out=np.zeros(cap.size), where=cap > 0)
    cost = 1.0 / (np.clip(share, 0.0, 1.0) + constant)
    return np.round(cost * COST_SCALE) / COST_SCALE


def cheapest_path(arrays: NetworkArrays, source: int, target: int, cost: np.ndarray, removed_nodes: np.ndarray,
                  removed_links: np.ndarray) -> list[int] | None:
    """The least-cost path by link costs ``cost`` (``None`` if there is none): the reference ExDijkstra
    (:func:`~qkdseg.routing.paths._exdijkstra_python`) with no node cost, relays with ``p = 0`` unusable,
    and ``cost`` per link crossed. Labels ``(cost, hops)``; among equal labels the smaller predecessor index."""
    node_cost = np.where(arrays.p > 0, 0.0, math.inf)
    return _exdijkstra_python(arrays, source, target, removed_nodes, removed_links, node_cost, link_cost=cost)


def _check_constant(constant) -> float:
    if isinstance(constant, bool) or not isinstance(constant, (int, float, np.integer, np.floating)) \
            or not math.isfinite(constant) or constant <= 0:
        raise InvalidRequest(f"constant={constant!r} must be a positive number (the c of the link cost 1 / (f + c))")
    return float(constant)


@register(
    "least-loaded",
    "Pool-aware baseline: successive least-cost paths without segments, link cost 1 / (share of the pool left + c)",
    {
        "max_paths": "number of paths (default: unlimited)",
        "constant": f"c of the link cost 1 / (f + c), f the share of the pool left (default {DEFAULT_CONSTANT})",
    },
    pool_aware=True,
)
def least_loaded(
    arrays: NetworkArrays,
    source: int,
    target: int,
    *,
    removed_links: np.ndarray | None = None,
    max_paths: int | None = None,
    constant: float = DEFAULT_CONSTANT,
):
    """Pool-aware multipath on node indices; returns ``(segment_nodes, paths)``."""
    cost = link_costs(arrays, _check_constant(constant))
    rn, rl = request_masks(arrays, source, target, removed_links)  # the ends are masked: never relays
    paths = successive_paths(arrays, lambda n, m: cheapest_path(arrays, source, target, cost, n, m), rn,
                             np.array(rl, dtype=bool, copy=True), arrays.trusted, max_paths)
    return [source, target], [paths]
