"""The most secure path between two nodes, on node ids: :func:`exdijkstra` (ExDijkstra, docs/model.md section 3)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from ..errors import NoPath
from ..network import Network
from ..routing.paths import exdijkstra_indices
from .checks import _check_request, _removed_masks


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
    rn, rl = _removed_masks(network, removed_nodes, removed_links)
    path = exdijkstra_indices(arrays, s, d, rn, rl)
    if path is None:
        raise NoPath(f"no usable path from {source!r} to {destination!r}")
    return [arrays.node_ids[v] for v in path]
