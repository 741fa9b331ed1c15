"""MSP, the stochastic-paths baseline (docs/model.md section 3, docs/baselines.md)."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconstruction_checker import check_route, load_network
from qkdseg import ALGORITHMS, InvalidRequest, Network, example_network, route, waxman, write_network
from qkdseg.routing.msp import random_walk_path
from strategies import small_networks


def shared_relay_network() -> Network:
    """Two routes 0 -> 5 that must both cross trusted relay 3, whose p = 0.9
    (a relaxed trusted relay): MSP keeps trusted relays usable, so its paths
    share 3 and the independence formula over-states their security."""
    g = nx.Graph(name="shared")
    for v, (trusted, p) in {0: (False, 1.0), 1: (False, 0.8), 2: (False, 0.8), 3: (True, 0.9),
                            4: (False, 0.8), 6: (False, 0.8), 5: (False, 1.0)}.items():
        g.add_node(v, trusted=trusted, p=p)
    g.add_edges_from([(0, 1), (1, 3), (3, 4), (4, 5), (0, 2), (2, 3), (3, 6), (6, 5)])
    return Network(g)


def test_msp_exact_strictly_below_claimed_with_shared_relay(tmp_path):
    net = shared_relay_network()
    r = route(net, 0, 5, algorithm="msp", seed=1)
    assert len(r.paths) == 2 and all(3 in path for path in r.paths)
    exact = 0.9 * (1 - (1 - 0.64) ** 2)
    claimed = 1 - (1 - 0.9 * 0.64) ** 2
    assert r.security == pytest.approx(exact)
    d = r.to_dict()
    assert d["security_claimed"] == pytest.approx(claimed)
    assert d["security"] < d["security_claimed"] - 0.03
    write_network(net, tmp_path / "net.json")
    check_route(load_network(tmp_path / "net.json"), json.loads(json.dumps(d)))


def test_msp_is_seeded():
    net = waxman(60, trusted=6, p=0.8, seed=3)
    a = route(net, 0, 59, algorithm="msp", seed=11)
    b = route(net, 0, 59, algorithm="msp", seed=11)
    assert a.paths == b.paths and a.options["seed"] == 11
    others = {tuple(route(net, 0, 59, algorithm="msp", seed=s).paths[0]) for s in range(8)}
    assert len(others) > 1, "different seeds should give different walks"
    assert route(net, 0, 59, algorithm="msp").options == {"seed": 0}


def test_msp_options_and_errors():
    net = example_network()
    assert set(ALGORITHMS["msp"].options) == {"max_paths", "seed", "beta", "max_steps", "shared_relays"}
    assert len(route(net, 0, 7, algorithm="msp", max_paths=1).paths) == 1
    assert route(net, 0, 7, algorithm="msp", max_steps=1).blocked  # a walk needs 6 steps here
    for bad in ({"seed": -1}, {"seed": 1.5}, {"beta": -1.0}, {"beta": float("nan")}, {"max_steps": 0}):
        with pytest.raises(InvalidRequest):
            route(net, 0, 7, algorithm="msp", **bad)


def test_msp_large_beta_walks_a_shortest_hop_path():
    net = waxman(80, trusted=8, p=0.8, seed=5)
    g = net.graph
    for s, d in [(0, 40), (3, 77), (10, 11)]:
        r = route(net, s, d, algorithm="msp", beta=60.0, max_paths=1, seed=2)
        h = nx.subgraph(g, [v for v in g if v in (s, d) or g.nodes[v]["p"] > 0])
        assert len(r.paths[0]) - 1 == nx.shortest_path_length(h, s, d)


def test_random_walk_backtracks_out_of_dead_ends():
    # 0 - 1 - 2 - 3 - 9 with a long dead-end branch off 1; beta = 0 (uniform).
    g = nx.path_graph([0, 1, 2, 3, 9])
    nx.add_path(g, [1, 4, 5, 6, 7])
    nx.set_node_attributes(g, 0.9, "p")
    net = Network(g)
    arrays = net.arrays
    for seed in range(20):
        rn = np.zeros(arrays.n_nodes, dtype=bool)
        rl = np.zeros(arrays.n_links, dtype=bool)
        path = random_walk_path(arrays, 0, arrays.index[9], rn, rl, np.random.default_rng(seed), beta=0.0)
        assert [arrays.node_ids[v] for v in path] == [0, 1, 2, 3, 9]


@settings(max_examples=60, deadline=None)
@given(g=small_networks(min_nodes=2, max_nodes=9), seed=st.integers(0, 2**16), beta=st.sampled_from([0.0, 1.0, 5.0]))
def test_msp_paths_valid_disjoint_and_exact_below_claimed(tmp_path_factory, g, seed, beta):
    net = Network(g)
    s, d = 0, net.n_nodes - 1
    if s == d:
        return
    r = route(net, s, d, algorithm="msp", seed=seed, beta=beta)
    single = route(net, s, d, algorithm="single")
    # The walk is a complete search: it finds a path exactly when one exists.
    assert r.blocked == single.blocked
    path = tmp_path_factory.mktemp("msp") / "net.json"
    write_network(net, path)
    exact = check_route(load_network(path), json.loads(json.dumps(r.to_dict())))
    assert exact <= r.security_independent + 1e-12
