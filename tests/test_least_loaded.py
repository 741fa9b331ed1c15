"""``least-loaded``, the pool-aware baseline (issue 39 item 4): disjoint paths, fuller links preferred, each
path the cheapest by an independent Dijkstra (networkx), registered and listed, and in the simulator's
load sweeps with blocking ratio and key utilisation."""

from __future__ import annotations

import re

import networkx as nx
import numpy as np
import pytest
from typer.testing import CliRunner

import qkdseg
from qkdseg.api import route_indices
from qkdseg.cli import app
from qkdseg.keys.levels import with_levels
from qkdseg.routing.least_loaded import DEFAULT_CONSTANT


def _line_net(pools: dict[tuple[int, int], int], p: float = 0.8, capacity: int = 100_000):
    g = nx.Graph()
    for u, v in pools:
        for x in (u, v):
            g.add_node(x, trusted=False, p=p)
        g.add_edge(u, v, pool_bits=capacity)
    net = qkdseg.Network(g, name="t")
    a = net.arrays
    level = a.pool_bits.copy()
    for (u, v), bits in pools.items():
        level[a.edge_index(a.index[u], a.index[v])] = bits
    return net, with_levels(a, level)


def _paths(arrays, s, d, **opts):
    r = route_indices(arrays, arrays.index[s], arrays.index[d], "least-loaded", **opts)
    ids = arrays.node_ids
    return [[ids[v] for v in p] for seg in r.index_paths for p in seg]


def test_prefers_the_fuller_links_even_over_more_hops():
    # 0-1-5: two hops, link 0-1 at 5% of its pool; 0-2-3-5: three hops, all full; 0-4-5: two hops at 60%
    pools = {(0, 1): 5_000, (1, 5): 100_000, (0, 2): 100_000, (2, 3): 100_000, (3, 5): 100_000,
             (0, 4): 60_000, (4, 5): 60_000}
    net, a = _line_net(pools)
    # costs: 0-1-5 = 1/0.15 + 1/1.1 = 7.58; 0-2-3-5 = 3/1.1 = 2.73; 0-4-5 = 2/0.7 = 2.86
    assert _paths(a, 0, 5, max_paths=1) == [[0, 2, 3, 5]]
    assert _paths(a, 0, 5) == [[0, 2, 3, 5], [0, 4, 5], [0, 1, 5]]  # every disjoint path, cheapest first
    # ExDijkstra (disjoint) knows nothing of the levels: it takes a two-hop path first
    assert len(qkdseg.route(net, 0, 5, "disjoint").paths[0]) == 3
    # full pools: every link costs the same, least hops first (ties by the smaller index)
    full = net.arrays
    assert _paths(full, 0, 5, max_paths=1) == [[0, 1, 5]]
    # a larger c flattens the costs towards hop counts: at c = 10, 0-4-5 (2/10.6) beats 0-1-5 (1/10.05 + 1/11)
    # and 0-2-3-5 (3/11)
    assert _paths(a, 0, 5, max_paths=1, constant=10.0) == [[0, 4, 5]]


def test_paths_are_disjoint_and_each_the_cheapest_by_networkx():
    """On random Waxman networks with random levels: no untrusted relay and no link twice, and each path
    costs what networkx's Dijkstra finds on what is left after the paths before it."""
    rng = np.random.default_rng(3)
    checked = 0
    for seed in range(4):
        net = qkdseg.waxman(40, trusted=5, p=0.8, seed=seed)
        base = net.arrays
        level = (base.pool_bits * rng.uniform(0.0, 1.0, base.n_links)).astype(np.int64)
        a = with_levels(base, level)
        cost = 1.0 / (level / base.pool_bits + DEFAULT_CONSTANT)
        for _ in range(5):
            s, d = (int(x) for x in rng.choice(40, 2, replace=False))
            r = route_indices(a, s, d, "least-loaded", block_bits=1_000)
            paths = [p for seg in r.index_paths for p in seg]
            relays = [v for p in paths for v in p[1:-1] if not base.trusted[v]]
            links = [base.edge_index(x, y) for p in paths for x, y in zip(p, p[1:])]
            assert len(relays) == len(set(relays)) and len(links) == len(set(links))
            assert all(level[k] >= 1_000 for k in links)  # only links that hold the key size
            g = nx.Graph()
            for k in range(base.n_links):
                if level[k] >= 1_000:
                    g.add_edge(int(base.edge_u[k]), int(base.edge_v[k]), w=float(cost[k]), k=k)
            for p in paths:
                want = nx.dijkstra_path_length(g, s, d, weight="w")
                got = sum(cost[base.edge_index(x, y)] for x, y in zip(p, p[1:]))
                assert got == pytest.approx(want, abs=1e-6)
                g.remove_edges_from(list(zip(p, p[1:])))
                g.remove_nodes_from([v for v in p[1:-1] if not base.trusted[v]])
                checked += 1
            assert not (s in g and d in g and nx.has_path(g, s, d))  # and no further path was left out
    assert checked > 20


def test_registered_listed_and_checked():
    res = CliRunner().invoke(app, ["algorithms"])
    assert res.exit_code == 0
    assert "least-loaded" in re.findall(r"^│ ([a-z][a-z-]*)\s+│", res.output, flags=re.M)
    assert "least-loaded" in qkdseg.ALGORITHMS and qkdseg.ALGORITHMS["least-loaded"].pool_aware
    with pytest.raises(qkdseg.InvalidRequest, match="constant=0"):
        qkdseg.route(qkdseg.example_network(), 0, 7, "least-loaded", constant=0)


def test_in_a_load_sweep_with_blocking_ratio_and_key_utilisation():
    """Beside smr, smr-level and disjoint on one trace: blocking ratio = blocked / requests, key utilisation
    = link bits debited / (full pools + floor(rate x horizon) per link), recomputed here."""
    from qkdseg.experiments.simulation import run_load_sweep

    net = qkdseg.waxman(30, trusted=4, p=0.8, seed=5)
    algs = ("smr", "smr-level", "disjoint", "least-loaded")
    df, _ = run_load_sweep(net, [200.0], duration=1.0, algorithms=algs, key_bits=10_000, backend="serial",
                           progress=False)
    assert list(df["algorithm"]) == list(algs)
    generated = int(net.arrays.pool_bits.sum()) + 100_000 * net.n_links  # 1 s at the default 100 kb/s
    for _, r in df.iterrows():
        assert r["blocking"] == pytest.approx(r["blocked"] / r["requests"])
        assert r["generated_bits"] == generated
        assert r["key_utilisation"] == pytest.approx(r["consumed_link_bits"] / generated)
        assert 0 < r["key_utilisation"] <= 1
        assert r["consumed_link_bits"] == pytest.approx(r["served"] * r["mean_consumed_bits"])
