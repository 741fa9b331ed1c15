"""smr-exact and smr's verify option: never below disjoint (Hypothesis on
Waxman networks), equal to a brute force over every segment-node chain on
small networks (tests/segment_checker.py, no qkdseg import), options."""

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import segment_checker as chk
from qkdseg import InvalidRequest, Network, route, waxman
from qkdseg.routing import get_algorithm
from qkdseg.routing.smr_exact import ordered_chains

TOL = 1e-12


@st.composite
def waxman_requests(draw):
    """A Waxman network of 20 to 100 nodes and a request on it."""
    n = draw(st.integers(20, 100))
    trusted = draw(st.integers(0, min(30, n - 2)))
    p = draw(st.sampled_from([0.5, 0.6, 0.7, 0.8, 0.9, 0.95]))
    trusted_p = draw(st.sampled_from([1.0, 1.0, 0.97]))
    alpha = 0.15 * (100 / n) ** 0.5  # the paper's mean degree at every size
    net = waxman(n, trusted=trusted, p=p, trusted_p=trusted_p, alpha=alpha, seed=draw(st.integers(0, 10**6)))
    s, d = draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
    return net, s, d


@settings(max_examples=40, deadline=None)
@given(waxman_requests(), st.sampled_from([None, None, 2]), st.sampled_from([{}, {}, {"candidates": 1}, {"candidates": 2}]))
def test_never_below_disjoint_or_smr(req, max_paths, cap):
    """smr-exact >= disjoint and >= smr on the same request, whatever the
    candidate cap; smr(verify) >= disjoint."""
    net, s, d = req
    opts = {} if max_paths is None else {"max_paths": max_paths}
    dis = route(net, s, d, "disjoint", **opts).security
    smr = route(net, s, d, "smr", **opts).security
    exact = route(net, s, d, "smr-exact", **cap, **opts)
    assert exact.security >= dis - TOL
    assert exact.security >= smr - TOL
    assert route(net, s, d, "smr-exact", exhaustive=0, candidates=3, **opts).security >= dis - TOL
    k = cap.get("candidates", 8)
    allowed = set(chk.detour_order(net.graph, s, d)[:k]) | set(route(net, s, d, "smr", **opts).segment_nodes)
    assert set(exact.segment_nodes[1:-1]) <= allowed
    verified = route(net, s, d, "smr", verify=True, **opts).security
    assert verified >= dis - TOL
    assert verified == pytest.approx(max(smr, dis), abs=TOL) or verified == pytest.approx(smr, abs=TOL)


@settings(max_examples=15, deadline=None)
@given(waxman_requests())
def test_keys_objective_never_fewer_keys_than_disjoint(req):
    """With objective='keys', never fewer global keys at the level than disjoint."""
    net, s, d = req
    k_dis = route(net, s, d, "disjoint", epsilon=0.9).reconstruction.n_keys
    k_smr = route(net, s, d, "smr", epsilon=0.9).reconstruction.n_keys
    k = route(net, s, d, "smr-exact", objective="keys", keys_epsilon=0.9, epsilon=0.9).reconstruction.n_keys
    assert k >= k_dis and k >= k_smr


@settings(max_examples=20, deadline=None)
@given(waxman_requests(), st.sampled_from([None, 0, 1, 8]))
def test_candidates_in_detour_order(req, cap):
    """The candidates are the trusted relays by hop detour, then node order (the checker's order)."""
    from qkdseg.routing.smr import request_masks
    from qkdseg.routing.smr_exact import candidate_relays

    net, s, d = req
    a = net.arrays
    rn, _ = request_masks(a, a.index[s], a.index[d], None)
    got = [a.node_ids[v] for v in candidate_relays(a, a.index[s], a.index[d], rn, "numba", cap)[0]]
    assert got == chk.detour_order(net.graph, s, d)[:cap]


@settings(max_examples=10, deadline=None)
@given(waxman_requests())
def test_python_and_numba_kernels_agree(req):
    net, s, d = req
    a = net.arrays
    f = get_algorithm("smr-exact").func
    args = (a, a.index[s], a.index[d])
    assert f(*args, kernel="python") == f(*args, kernel="numba")


@st.composite
def small_graphs(draw):
    """A connected graph of 4 to 14 nodes (a random tree plus a few links),
    at most 3 trusted relays, untrusted p from a small set (ties are common)."""
    n = draw(st.integers(4, 14))
    g = nx.Graph()
    n_trusted = draw(st.integers(0, 3))
    trusted = set(draw(st.lists(st.integers(0, n - 1), min_size=n_trusted, max_size=n_trusted, unique=True)))
    for v in range(n):
        t = v in trusted
        g.add_node(v, trusted=t, p=1.0 if t else draw(st.sampled_from([0.5, 0.8, 0.8, 0.9, 1.0, 0.0])))
    for v in range(1, n):
        g.add_edge(v, draw(st.integers(0, v - 1)))
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=n // 2 + 2))
    g.add_edges_from((u, v) for u, v in extra if u != v)
    s, d = draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
    return g, s, d


@settings(max_examples=60, deadline=None)
@given(small_graphs(), st.sampled_from([None, None, 1, 2]))
def test_uncapped_equals_brute_force(case, max_paths):
    """At most 3 trusted relays, no cap: smr-exact's security is the best over
    every ordered chain of trusted relays, each built by step 2 and evaluated
    by enumeration; its own route is step 2's over the chain it chose."""
    g, s, d = case
    net = Network(g)
    opts = {} if max_paths is None else {"max_paths": max_paths}
    r = route(net, s, d, "smr-exact", candidates=None, **opts)
    best, _ = chk.brute_force_best(g, s, d, max_paths)
    if r.blocked:
        assert best == 0.0
        return
    chain = tuple(r.segment_nodes[1:-1])
    assert r.security == pytest.approx(best, abs=1e-9)
    assert [list(map(list, seg.paths)) for seg in r.segments] == chk.round_robin(g, (s, d), [s, *chain, d], max_paths)
    assert chk.chain_security(g, s, d, chain, max_paths) == pytest.approx(r.security, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(small_graphs())
def test_greedy_at_least_best_single_segment_node(case):
    """The greedy search (exhaustive=0) tries every single node first, so it is
    never below the best single-segment-node route or the route with none."""
    g, s, d = case
    r = route(Network(g), s, d, "smr-exact", candidates=None, exhaustive=0)
    best1, _ = chk.brute_force_best(g, s, d, max_len=1)
    assert r.security >= best1 - 1e-9


def test_smr_loses_to_disjoint_and_smr_exact_does_not():
    """The worked example of docs/algorithms.md, checked with the independent checker."""
    g = worked_example()
    net = Network(g)
    smr, dis, exact = (route(net, 0, 9, a) for a in ("smr", "disjoint", "smr-exact"))
    assert smr.segment_nodes == (0, 5, 9) and dis.segment_nodes == (0, 9)
    assert smr.security == pytest.approx(chk.chain_security(g, 0, 9, (5,)), abs=1e-12)
    assert dis.security == pytest.approx(chk.chain_security(g, 0, 9, ()), abs=1e-12)
    assert smr.security < dis.security
    assert exact.security == pytest.approx(chk.brute_force_best(g, 0, 9)[0], abs=1e-12)
    assert (round(smr.security, 6), round(dis.security, 6), exact.segment_nodes) == (0.96, 0.97408, (0, 9))
    assert route(net, 0, 9, "smr", verify=True).segment_nodes == (0, 9)


#: The worked example's links (docs/algorithms.md): 10 nodes, node 5 the only trusted relay.
EDGES = [(0, 1), (0, 4), (0, 6), (0, 8), (1, 5), (1, 7), (2, 3), (2, 4), (2, 9), (3, 6), (3, 9), (4, 7), (5, 6), (5, 9), (6, 7)]


def worked_example() -> nx.Graph:
    """p = 0.8 except the trusted relay 5: SMR's two-path test picks 5 (0.96
    against 0.928), but the full route without it has a third path."""
    g = nx.Graph()
    for v in range(10):
        g.add_node(v, trusted=v == 5, p=1.0 if v == 5 else 0.8)
    g.add_edges_from(EDGES)
    return g


def ladder(rungs: int, p: float = 0.8) -> nx.Graph:
    """s = 0 -> (two relays) -> trusted -> (two relays) -> trusted ... -> d:
    ``rungs`` trusted relays in a row, each gap bridged by two relays of ``p``.
    Nodes are numbered along the ladder; returns the graph (d is the last node)."""
    g = nx.Graph()
    hubs = [0]
    v = 1
    for _ in range(rungs + 1):
        a, b, hub = v, v + 1, v + 2
        v += 3
        for x in (a, b):
            g.add_node(x, trusted=False, p=p)
        g.add_node(hub, trusted=True, p=1.0)
        g.add_edges_from([(hubs[-1], a), (hubs[-1], b), (a, hub), (b, hub)])
        hubs.append(hub)
    g.nodes[hubs[-1]]["trusted"] = False  # the destination is a plain node
    g.nodes[0].update(trusted=False, p=p)
    out = nx.Graph()  # node order = id order, as the checker's tie rule assumes
    out.add_nodes_from(sorted(g.nodes(data=True)))
    out.add_edges_from(g.edges)
    return out


@pytest.mark.parametrize("rungs", [2, 3])
def test_ladder_needs_every_rung(rungs):
    """On a ladder every trusted relay must be a segment node (each adds a
    segment of two one-relay paths); the brute force agrees, the greedy
    search and SMR find the whole chain, and a cap of one candidate still
    keeps SMR's chain (never below smr)."""
    g = ladder(rungs)
    d = max(g.nodes)
    net = Network(g)
    best, chain = chk.brute_force_best(g, 0, d)
    assert len(chain) == rungs
    for opts in ({}, {"candidates": None}, {"exhaustive": 0}):
        r = route(net, 0, d, "smr-exact", **opts)
        assert r.security == pytest.approx(best, abs=1e-12) and r.segment_nodes == (0, *chain, d)
    smr = route(net, 0, d, "smr")
    assert route(net, 0, d, "smr-exact", candidates=1).security >= smr.security - TOL
    assert route(net, 0, d, "smr-exact", candidates=1).security > chk.chain_security(g, 0, d, chain[:1]) + 1e-6


#: Two networks from a random search (corridor-shaped geometric graphs, seeded):
#: the best chain has two segment nodes, beats every single one and SMR's choice.
#: (nodes' p in order, links, trusted relays, request); the first needs the order 8 -> 4.
TWO_NODE_CASES = [
    ([0.9, 0.9, 0.5, 1.0, 1.0, 0.8, 0.8, 0.5, 1.0, 0.5, 0.8, 0.5, 0.9],
     [(0, 1), (1, 3), (1, 5), (1, 8), (2, 3), (3, 9), (4, 5), (4, 6), (4, 9), (5, 6), (5, 8), (5, 9), (6, 7), (6, 12),
      (7, 8), (7, 9), (8, 9), (9, 10), (11, 12)], {3, 4, 8}, (0, 12)),
    ([0.5, 1.0, 0.5, 1.0, 0.9, 0.9, 0.8, 0.9, 0.8, 1.0, 0.8],
     [(0, 1), (1, 2), (1, 4), (2, 3), (3, 4), (3, 5), (3, 8), (4, 6), (5, 6), (6, 7), (6, 8), (6, 9), (7, 8), (8, 10)],
     {1, 3, 9}, (0, 10)),
]


@pytest.mark.parametrize("case", range(len(TWO_NODE_CASES)))
def test_two_node_chains_beyond_smr_and_single_nodes(case):
    ps, edges, trusted, (s, d) = TWO_NODE_CASES[case]
    g = nx.Graph()
    for v, p in enumerate(ps):
        g.add_node(v, trusted=v in trusted, p=p)
    g.add_edges_from(edges)
    net = Network(g)
    best, chain = chk.brute_force_best(g, s, d)
    assert len(chain) == 2
    assert best > chk.brute_force_best(g, s, d, max_len=1)[0] + 1e-6
    r = route(net, s, d, "smr-exact")
    assert r.segment_nodes == (s, *chain, d) and r.security == pytest.approx(best, abs=1e-12)
    assert r.security > route(net, s, d, "smr").security + 1e-6


def test_greedy_search_alone_walks_the_ladder():
    """The greedy search by itself (no incumbent): round one takes a rung,
    round two inserts the other on the right side of it."""
    from qkdseg.routing.smr import request_masks
    from qkdseg.routing.smr_exact import _Evaluator, _greedy, candidate_relays

    g = ladder(2)
    d = max(g.nodes)
    a = Network(g).arrays
    rn, rl = request_masks(a, 0, d, None)
    cands, dist = candidate_relays(a, 0, d, rn, "python", None)
    chain, value = _greedy(_Evaluator(a, 0, d, rn, rl, None, "security", 0.9, "python"), cands, dist, a, "python")
    best, best_chain = chk.brute_force_best(g, 0, d)
    assert tuple(a.node_ids[v] for v in chain) == best_chain and value[0] == pytest.approx(best, abs=1e-12)


def test_ties_keep_fewer_segment_nodes():
    """s - a - T - b - d: segmenting at T gives the same security (0.8 * 0.8)
    and the same paths; the tie keeps the route without segment nodes."""
    g = nx.Graph()
    for v, (t, p) in enumerate([(False, 1.0), (False, 0.8), (True, 1.0), (False, 0.8), (False, 1.0)]):
        g.add_node(v, trusted=t, p=p)
    g.add_edges_from([(0, 1), (1, 2), (2, 3), (3, 4)])
    r = route(Network(g), 0, 4, "smr-exact")
    assert r.segment_nodes == (0, 4) and r.security == pytest.approx(chk.chain_security(g, 0, 4, (2,)))


def test_options_are_checked():
    net = waxman(30, trusted=5, seed=1)
    for bad, match in (({"objective": "bogus"}, "objective='bogus'"), ({"candidates": -1}, "candidates=-1"),
                       ({"keys_epsilon": 1.5}, "keys_epsilon=1.5"), ({"exhaustive": True}, "exhaustive=True")):
        with pytest.raises(InvalidRequest, match=match):
            route(net, 0, 5, "smr-exact", **bad)
    with pytest.raises(InvalidRequest, match="verify='yes'"):
        route(net, 0, 5, "smr", verify="yes")
    with pytest.raises(InvalidRequest, match="no option 'verify'"):
        route(net, 0, 5, "smr-exact", verify=True)


def test_ordered_chains_count():
    assert [ordered_chains(k) for k in range(5)] == [1, 2, 5, 16, 65]
    assert ordered_chains(3) == sum(1 for k in range(4) for _ in __import__("itertools").permutations(range(3), k))


def test_candidate_cap_zero_is_disjoint_or_smr():
    """candidates=0: only the incumbents (no segment, SMR's chain) remain."""
    net = waxman(100, trusted=20, p=0.7, seed=5)
    rng = np.random.default_rng(0)
    for _ in range(10):
        s, d = (int(x) for x in rng.choice(100, 2, replace=False))
        r = route(net, s, d, "smr-exact", candidates=0)
        smr, dis = route(net, s, d, "smr"), route(net, s, d, "disjoint")
        assert r.segment_nodes in (smr.segment_nodes, dis.segment_nodes)
        assert r.security == pytest.approx(max(smr.security, dis.security), abs=TOL)
