"""Baselines without segments (docs/model.md section 3).

- ``single``: one ExDijkstra path, the classic trusted-relay chain.
- ``disjoint``: successive ExDijkstra paths source -> destination, each
  removing its untrusted relays and links: SMR with no segment nodes, the
  ablation that isolates what segmenting buys.
"""

from __future__ import annotations

import numpy as np

from ..network import NetworkArrays
from .registry import register
from .smr import request_masks, round_robin_paths


@register(
    "disjoint",
    "Successive ExDijkstra paths without segments (untrusted relays and links removed after each)",
    {"max_paths": "number of paths (default: unlimited)"},
)
def disjoint(
    arrays: NetworkArrays,
    source: int,
    target: int,
    *,
    removed_links: np.ndarray | None = None,
    max_paths: int | None = None,
):
    """Disjoint-relay multipath on node indices; returns ``(segment_nodes, paths)``."""
    rn, rl = request_masks(arrays, source, target, removed_links)
    nodes = [source, target]
    return nodes, round_robin_paths(arrays, nodes, max_paths=max_paths, removed_nodes=rn, removed_links=rl)


@register("single", "One ExDijkstra path: the classic trusted-relay chain")
def single(arrays: NetworkArrays, source: int, target: int, *, removed_links: np.ndarray | None = None):
    """Single most-secure path on node indices; returns ``(segment_nodes, paths)``."""
    rn, rl = request_masks(arrays, source, target, removed_links)
    nodes = [source, target]
    return nodes, round_robin_paths(arrays, nodes, max_paths=1, removed_nodes=rn, removed_links=rl)
