"""The built-in example network, for the docs and doctests."""

from __future__ import annotations

import math

import networkx as nx

from ..network import DEFAULT_POOL_BITS, Network


def example_network() -> Network:
    """The built-in example: 10 nodes, trusted relays 3 and 4, untrusted p = 0.8.

    ::

            1       5       8
           / \\     / \\     / \\
          0   T3---+   T4---+   7      (each diamond: two one-relay routes)
           \\ /     \\ /     \\ /
            2       6       9

    Links: 0-1, 0-2, 1-3, 2-3, 3-5, 3-6, 5-4, 6-4, 4-8, 4-9, 8-7, 9-7, each
    with a 100 kb pool and a length in km. A request 0 -> 7 is the natural
    demonstration: SMR segments it at both trusted relays.

    Examples
    --------
    >>> net = example_network()
    >>> net.n_nodes, net.n_links, net.trusted_nodes
    (10, 12, [3, 4])
    """
    pos = {0: (0, 0), 1: (1, 1), 2: (1, -1), 3: (2, 0), 4: (4, 0), 5: (3, 1), 6: (3, -1), 7: (6, 0), 8: (5, 1), 9: (5, -1)}
    g = nx.Graph(name="example")
    for v in sorted(pos):
        trusted = v in (3, 4)
        g.add_node(v, trusted=trusted, p=1.0 if trusted else 0.8, pos=[float(c) for c in pos[v]])
    for u, v in [(0, 1), (0, 2), (1, 3), (2, 3), (3, 5), (3, 6), (5, 4), (6, 4), (4, 8), (4, 9), (8, 7), (9, 7)]:
        g.add_edge(u, v, pool_bits=DEFAULT_POOL_BITS, length_km=round(25.0 * math.dist(pos[u], pos[v]), 3))
    return Network(g, name="example")
