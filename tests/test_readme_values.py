"""The README's API example, recomputed by the independent checkers.

The values in README.md's doctest come from one seeded random network
(``waxman(100, trusted=10, p=0.8, seed=7)``, request 3 -> 60): they are
regression values, too large to work by hand. Here every one of them is
recomputed without qkdseg's routing, security or reconstruction code: the
SMR oracle (tests/checkers.py), the brute-force security and the independent
count of the paper scheme (tests/reconstruction_checker.py).
"""

from __future__ import annotations

import networkx as nx
import pytest

from checkers import SMRChecker, brute_security
from reconstruction_checker import Net, paper_key_count
from qkdseg import waxman


@pytest.fixture(scope="module")
def readme_case():
    g = nx.Graph(waxman(100, trusted=10, p=0.8, seed=7).graph)
    nodes, paths = SMRChecker(g, 3, 60).route()
    return g, nodes, paths


def test_readme_route_values(readme_case):
    g, nodes, paths = readme_case
    # >>> r.segment_nodes, len(r.paths), round(r.security, 6)
    assert tuple(nodes) == (3, 85, 60) and sum(len(seg) for seg in paths) == 11
    doc = {"blocked": False, "segment_nodes": nodes, "segments": [{"paths": seg} for seg in paths]}
    assert round(brute_security(g, doc), 6) == 0.998898
    # >>> r.consumed_bits, r.block_bits, round(r.key_consumption_rate, 6): every pool is 100 kb
    hops = sum(len(p) - 1 for seg in paths for p in seg)
    assert {d["pool_bits"] for *_, d in g.edges(data=True)} == {100_000}
    assert (hops * 100_000, round(hops / g.number_of_edges(), 6)) == (3_900_000, 0.118182)
    # >>> r = qkdseg.route(net, 3, 60, epsilon=0.9): keys, key bits, consumed bits per key bit
    net = Net({v: {"p": g.nodes[v]["p"], "trusted": g.nodes[v]["trusted"]} for v in g.nodes}, set())
    keys = paper_key_count(net, paths, nodes[1:-1], 0.9)
    assert (keys, keys * 100_000, hops * 100_000 / (keys * 100_000)) == (2, 200_000, 19.5)


def test_readme_exdijkstra_value(readme_case):
    # >>> qkdseg.exdijkstra(net, 3, 60): no node or link removed
    g, _, _ = readme_case
    assert SMRChecker(g, 3, 60).exdijkstra(3, 60, set(), set()) == [3, 92, 85, 60]
