"""ExDijkstra against brute force; SMR, disjoint, single invariants."""

import math

import networkx as nx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkers import best_path_security, brute_security, check_paths, check_smr_invariants, path_psec
from qkdseg import InvalidRequest, Network, NodeNotFound, NoPath, example_network, exdijkstra, route, waxman
from qkdseg.routing.paths import exdijkstra_indices
from qkdseg.routing.smr import round_robin_paths
from strategies import small_networks


def _brute_best(g, s, t, banned_nodes, banned_links):
    """(max security, min hops among the most secure) over all simple paths."""
    best = None
    h = nx.Graph(g)
    h.remove_edges_from(banned_links)
    for path in nx.all_simple_paths(h, s, t):
        rel = path[1:-1]
        if any(v in banned_nodes or g.nodes[v]["p"] == 0 for v in rel):
            continue
        key = (math.prod(g.nodes[v]["p"] for v in rel), -(len(path) - 1))
        if best is None or key[0] > best[0] + 1e-12 or (abs(key[0] - best[0]) <= 1e-12 and key[1] > best[1]):
            best = key
    if h.has_edge(s, t):
        best = (1.0, -1)
    return best


@given(small_networks(), st.data())
def test_exdijkstra_matches_brute_force(g, data):
    """ExDijkstra finds the most secure path, with the fewest hops among ties."""
    n = g.number_of_nodes()
    s = data.draw(st.integers(0, n - 1))
    t = data.draw(st.integers(0, n - 1).filter(lambda x: x != s))
    banned = set(data.draw(st.lists(st.integers(0, n - 1), max_size=3)))
    edges = list(g.edges)
    banned_links = data.draw(st.lists(st.sampled_from(edges), max_size=2, unique=True)) if edges else []
    net = Network(g)
    a = net.arrays
    rn = np.zeros(n, dtype=bool)
    rn[list(banned)] = True
    rl = np.zeros(a.n_links, dtype=bool)
    for u, v in banned_links:
        rl[a.edge_index(a.index[u], a.index[v])] = True
    path = exdijkstra_indices(a, s, t, rn, rl)
    best = _brute_best(g, s, t, banned, banned_links)
    if best is None:
        assert path is None
        return
    assert path is not None and path[0] == s and path[-1] == t and len(set(path)) == len(path)
    assert all(g.has_edge(x, y) for x, y in zip(path, path[1:]))
    assert all(not rn[v] for v in path[1:-1])
    assert all(not rl[a.edge_index(x, y)] for x, y in zip(path, path[1:]))
    assert math.prod(g.nodes[v]["p"] for v in path[1:-1]) == pytest.approx(best[0], rel=1e-9)
    assert len(path) - 1 == -best[1]


def test_exdijkstra_tie_break_is_node_order():
    # two equally secure two-hop paths 0-1-3 and 0-2-3: the smaller index wins
    g = nx.Graph([(0, 1), (0, 2), (1, 3), (2, 3)])
    net = Network(g, default_p=0.9)
    assert exdijkstra(net, 0, 3) == [0, 1, 3]
    assert exdijkstra(net, 0, 3, removed_nodes=[1]) == [0, 2, 3]
    assert exdijkstra(net, 0, 3, removed_links=[(0, 1)]) == [0, 2, 3]
    with pytest.raises(NoPath):
        exdijkstra(net, 0, 3, removed_nodes=[1, 2])


def test_exdijkstra_prefers_security_over_hops_and_skips_p_zero():
    g = nx.Graph([(0, 1), (1, 9), (0, 2), (2, 3), (3, 9)])
    nx.set_node_attributes(g, {0: 0.5, 9: 0.5, 1: 0.5, 2: 0.9, 3: 0.9}, "p")
    net = Network(g)
    assert exdijkstra(net, 0, 9) == [0, 2, 3, 9]  # 0.81 > 0.5
    net0 = net.with_nodes({2: {"p": 0.0}})
    assert exdijkstra(net0, 0, 9) == [0, 1, 9]


def test_example_route_smr():
    r = route(example_network(), 0, 7)
    assert r.segment_nodes == (0, 3, 4, 7)
    assert [len(s.paths) for s in r.segments] == [2, 2, 2]
    assert r.security == pytest.approx(0.96**3)
    assert r.block_bits == 100_000 and r.consumed_bits == 12 * 100_000
    d = route(example_network(), 0, 7, algorithm="disjoint")
    assert d.security == pytest.approx(1 - (1 - 0.8**3) ** 2)
    assert route(example_network(), 0, 7, algorithm="single").security == pytest.approx(0.8**3)


def test_max_paths_and_block_bits():
    net = example_network()
    r = route(net, 0, 7, max_paths=1)
    assert all(len(s.paths) == 1 for s in r.segments)
    r = route(net, 0, 7, block_bits=256)
    assert r.block_bits == 256 and r.consumed_bits == 12 * 256
    blocked = route(net, 0, 7, block_bits=10**9)
    assert blocked.blocked and blocked.security == 0 and blocked.consumed_bits == 0
    with pytest.raises(InvalidRequest, match="max_paths=0"):
        route(net, 0, 7, max_paths=0)
    with pytest.raises(InvalidRequest, match="metric"):
        route(net, 0, 7, metric="bogus")
    assert route(net, 0, 7, metric="length").segment_nodes == (0, 3, 4, 7)


def test_request_errors():
    net = example_network()
    with pytest.raises(NodeNotFound, match="99"):
        route(net, 0, 99)
    with pytest.raises(InvalidRequest, match="same node"):
        route(net, 3, 3)
    with pytest.raises(InvalidRequest, match="no option 'bogus'"):
        route(net, 0, 7, bogus=1)


def test_disconnected_request_is_blocked():
    g = nx.Graph([(0, 1), (2, 3)])
    r = route(Network(g, default_p=0.9), 0, 3)
    assert r.blocked and r.to_dict()["segments"] == [] and r.security == 0.0


def test_route_is_frozen_and_deterministic():
    net = waxman(100, trusted=10, seed=3)
    a, b = route(net, 1, 50), route(net, 1, 50)
    assert a.to_dict() == b.to_dict()
    with pytest.raises(AttributeError):
        a.security = 1.0


def test_round_robin_removes_for_all_segments():
    """A relay used by one segment is unavailable to the next (docs/model.md 3)."""
    g = nx.Graph()
    g.add_nodes_from(range(6))
    g.add_edges_from([(0, 3), (3, 1), (1, 4), (4, 2), (0, 5), (5, 1), (5, 2)])
    nx.set_node_attributes(g, {1: True}, "trusted")
    net = Network(g, default_p=0.9)
    paths = round_robin_paths(net.arrays, [0, 1, 2])
    # relay 5 serves segment 1 in round 2 and is then gone for segment 2
    assert paths == [[[0, 3, 1], [0, 5, 1]], [[1, 4, 2]]]


def _wax(n, seed):
    return waxman(n, trusted=max(2, n // 10), p=0.8, alpha=0.15 * math.sqrt(100 / n) * 1.25, seed=seed)


@pytest.mark.parametrize("algorithm", ["smr", "disjoint"])
@pytest.mark.parametrize("seed", range(12))
def test_independent_checker_on_waxman(algorithm, seed):
    """Done-when check: on 20-100 node Waxman networks the checker recomputes
    paths, invariants, first-path optimality and the exact security from the
    JSON and the graph alone."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 101))
    net = _wax(n, seed)
    g = nx.Graph(net.graph)
    for _ in range(4):
        s, d = (int(x) for x in rng.choice(n, 2, replace=False))
        r = route(net, s, d, algorithm=algorithm).to_dict()
        if r["blocked"]:
            assert not nx.has_path(g, s, d)
            continue
        check_smr_invariants(g, r, unlimited=True)
        first = r["segments"][0]["paths"][0]
        best = best_path_security(g, first[0], first[-1], banned={s, d})
        assert path_psec(g, first) == pytest.approx(best, rel=1e-9)
        assert r["security"] == pytest.approx(brute_security(g, r), abs=1e-12)
        hops = sum(len(p) - 1 for sg in r["segments"] for p in sg["paths"])
        assert r["consumed_bits"] == hops * r["block_bits"]
        assert r["key_consumption_rate"] == pytest.approx(r["consumed_bits"] / (100_000 * g.number_of_edges()))


@given(small_networks(min_nodes=3, max_nodes=9, p_values=[0.5, 0.8, 1.0]), st.data())
def test_smr_invariants_hypothesis(g, data):
    """SMR paths are simple, segment nodes trusted, relays and links unshared,
    nothing left to find; single/disjoint paths are valid too."""
    n = g.number_of_nodes()
    s = data.draw(st.integers(0, n - 1))
    d = data.draw(st.integers(0, n - 1).filter(lambda x: x != s))
    net = Network(g)
    for algo in ("smr", "disjoint", "single"):
        r = route(net, s, d, algorithm=algo).to_dict()
        if r["blocked"]:
            h = nx.Graph(g)
            h.remove_nodes_from([v for v in g if v not in (s, d) and g.nodes[v]["p"] == 0])
            assert not nx.has_path(h, s, d)
            continue
        if algo == "single":
            check_paths(g, r)
            assert len(r["segments"]) == 1 and len(r["segments"][0]["paths"]) == 1
        else:
            check_smr_invariants(g, r, unlimited=True)
        assert r["security"] == pytest.approx(brute_security(g, r), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_smr_never_worse_than_its_step_one_choice(seed):
    """Each segment node SMR keeps made its step strictly better: at ``cur`` ->
    ``r``, two paths per segment over cur -> r -> d beat two direct paths
    cur -> d (by more than 1e-12), as the independent checker evaluates them;
    and the first kept node makes the two-path route strictly more secure
    than ``disjoint`` with two paths."""
    from checkers import SMRChecker

    rng = np.random.default_rng(seed)
    net = waxman(60, trusted=8, p=float(rng.choice([0.6, 0.8, 0.9])), seed=seed)
    g = nx.Graph(net.graph)
    kept = 0
    for _ in range(8):
        s = int(rng.integers(60))
        dist = nx.single_source_shortest_path_length(g, s)
        d = max(dist, key=lambda v: (dist[v], v))
        r = route(net, s, d)
        nodes = list(r.segment_nodes)
        ch = SMRChecker(g, s, d)
        for cur, nxt in zip(nodes, nodes[1:-1]):
            direct = ch.security([cur, d], ch.round_robin([cur, d], 2))
            segmented = ch.security([cur, nxt, d], ch.round_robin([cur, nxt, d], 2))
            assert segmented > direct + 1e-12, (nodes, cur, nxt)
            kept += 1
        if len(nodes) > 2:
            two = route(net, s, d, algorithm="disjoint", max_paths=2)
            seg_two = ch.security(nodes[:2] + [d], ch.round_robin(nodes[:2] + [d], 2))
            assert seg_two > two.security + 1e-12
    assert kept >= 1
