"""SMR against an independent oracle (tests/checkers.py: SMRChecker).

The oracle is written from docs/model.md (section 3 and its Refinements) with
networkx only. It must pick exactly the segment nodes ``qkdseg.route`` picks,
and step 2 must give exactly its paths, on random Waxman networks of 20 to
100 nodes with mixed p, relaxed trusted relays, empty or small link pools,
an explicit block size and a cap on paths. Both kernels (numba and the
pure-Python reference) are checked, so a wrong decision written into both
cannot pass.
"""

from __future__ import annotations

import os

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checkers import SMRChecker, brute_security
from qkdseg import Network, example_network, route

#: Security probabilities of untrusted relays: a few values, so that equal
#: products (ties) are frequent, and p = 0 (unusable) now and then.
P_SETS = [
    (0.8,),
    (0.5, 0.7, 0.9),
    (0.6, 0.8, 0.9, 0.95),
    (0.0, 0.5, 0.8, 0.9),
    (0.64, 0.8, 0.9, 0.81),  # 0.8 * 0.8 == 0.64 and 0.9 * 0.9 == 0.81: ties across hop counts
]


def waxman_case(seed: int, n: int, p_set: tuple, n_trusted: int, trusted_p: float, pools: bool) -> nx.Graph:
    """A Waxman graph (docs/model.md 7 scaled to n nodes) with mixed p, not resampled
    to connectivity: requests across components must come out blocked."""
    rng = np.random.default_rng(seed)
    alpha = 0.15 * (100 / n) ** 0.5
    g = nx.waxman_graph(n, beta=0.5, alpha=alpha, seed=int(rng.integers(2**31)))
    trusted = set(rng.choice(n, size=min(n_trusted, n), replace=False).tolist())
    for v in g.nodes:
        g.nodes[v].pop("pos", None)
        if v in trusted:
            g.nodes[v].update(trusted=True, p=trusted_p if rng.random() < 0.5 else 1.0)
        else:
            g.nodes[v].update(trusted=False, p=float(rng.choice(p_set)))
    for e in g.edges:
        g.edges[e]["pool_bits"] = int(rng.choice([0, 50_000, 100_000, 100_000])) if pools else 100_000
    return g


def far_pair(g: nx.Graph, rng) -> tuple[int, int]:
    """A random source and the node farthest from it in hops (ties: largest id);
    long requests are where step 1 keeps segment nodes."""
    s = int(rng.integers(g.number_of_nodes()))
    dist = nx.single_source_shortest_path_length(g, s)
    d = max(dist, key=lambda v: (dist[v], v))
    if d == s:
        d = (s + 1) % g.number_of_nodes()
    return s, d


def compare(g: nx.Graph, s, d, *, block_bits=None, max_paths=None) -> dict:
    """Route with qkdseg and with the oracle; both steps must agree exactly."""
    net = Network(g)
    opts = {} if max_paths is None else {"max_paths": max_paths}
    r = route(net, s, d, block_bits=block_bits, **opts).to_dict()
    oracle = SMRChecker(g, s, d, block_bits=block_bits)
    nodes, paths = oracle.route(max_paths=max_paths)
    if r["blocked"]:
        # a blocked request: some segment of the oracle's route finds no path
        assert any(not seg for seg in paths), (nodes, paths)
        return r
    assert r["segment_nodes"] == nodes, "step 1 picked other segment nodes"
    assert [seg["paths"] for seg in r["segments"]] == paths, "step 2 found other paths"
    assert r["security"] == pytest.approx(oracle.security(nodes, paths), abs=1e-12)
    return r


#: Kernels to run the comparisons under (``make mutate`` runs the Python one only:
#: mutants live in the Python reference).
KERNELS = os.environ.get("QKDSEG_TEST_KERNELS", "numba,python").split(",")


@pytest.fixture(params=KERNELS)
def kernel(request, monkeypatch):
    """Run under each kernel (QKDSEG_KERNEL is read at every call)."""
    monkeypatch.setenv("QKDSEG_KERNEL", request.param)
    return request.param


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(20, 100),
    p_set=st.sampled_from(P_SETS),
    n_trusted=st.integers(0, 15),
    trusted_p=st.sampled_from([1.0, 0.95]),
    pools=st.booleans(),
    block_bits=st.sampled_from([None, None, 60_000]),
    max_paths=st.sampled_from([None, None, 1, 2]),
)
def test_smr_equals_the_oracle_on_random_waxman(kernel, seed, n, p_set, n_trusted, trusted_p, pools, block_bits, max_paths):
    g = waxman_case(seed, n, p_set, n_trusted, trusted_p, pools)
    rng = np.random.default_rng(seed + 1)
    pairs = [far_pair(g, rng), far_pair(g, rng), tuple(int(x) for x in rng.choice(n, 2, replace=False))]
    for s, d in pairs:
        compare(g, s, d, block_bits=block_bits, max_paths=max_paths)


def test_oracle_cases_exercise_segmenting():
    """The random cases are not trivial: on long requests step 1 often keeps
    segment nodes (measured: 19 of 24 requests here), and the oracle agrees."""
    kept = 0
    for seed in range(8):
        g = waxman_case(seed, 60, P_SETS[seed % len(P_SETS)], 8, 1.0, False)
        rng = np.random.default_rng(seed)
        for _ in range(3):
            kept += len(compare(g, *far_pair(g, rng))["segment_nodes"]) > 2
    assert kept >= 8


def test_oracle_on_the_example_by_hand():
    """docs/model.md section 3 on the built-in example: the oracle reproduces
    the documented route 0 -> 3 -> 4 -> 7 (two paths per segment)."""
    net = example_network()
    g = nx.Graph(net.graph)
    nodes, paths = SMRChecker(g, 0, 7).route()
    assert nodes == [0, 3, 4, 7]
    assert [len(seg) for seg in paths] == [2, 2, 2]
    assert compare(g, 0, 7)["segment_nodes"] == [0, 3, 4, 7]


def _diamond(p_upper, p_lower):
    """s=0 and d=5 joined by two relay chains 0-1-2-5 and 0-3-4-5, and the
    trusted relay 6 adjacent to s and d through private relays 7, 8 and 9, 10."""
    g = nx.Graph()
    g.add_edges_from([(0, 1), (1, 2), (2, 5), (0, 3), (3, 4), (4, 5)])
    g.add_edges_from([(0, 7), (7, 6), (0, 8), (8, 6), (6, 9), (9, 5), (6, 10), (10, 5)])
    for v in g.nodes:
        g.nodes[v].update(trusted=v == 6, p=1.0)
    for v, p in zip((1, 2), p_upper):
        g.nodes[v]["p"] = p
    for v, p in zip((3, 4), p_lower):
        g.nodes[v]["p"] = p
    for v in (7, 8, 9, 10):
        g.nodes[v]["p"] = 0.5
    for e in g.edges:
        g.edges[e]["pool_bits"] = 100_000
    return g


def test_step_one_worked_by_hand():
    """Direct with 0.9 relays: two paths 0-1-2-5 and 0-3-4-5 of 0.81 each (the
    tie of cost and hops goes to the smaller predecessor 2 of node 5),
    1 - 0.19^2 = 0.9639. Through the trusted 6: per segment two one-relay
    paths of 0.5, 1 - 0.25 = 0.75, so 0.75^2 = 0.5625 < 0.9639: no segment.
    With 0.3 relays the direct paths cross 6 as a plain relay (0-7-6-9-5 and
    0-8-6-10-5, 0.25 each beats 0.09): 1 - 0.75^2 = 0.4375 < 0.5625: keep 6."""
    g = _diamond((0.9, 0.9), (0.9, 0.9))
    ch = SMRChecker(g, 0, 5)
    assert ch.round_robin([0, 5], 2) == [[[0, 1, 2, 5], [0, 3, 4, 5]]]
    assert ch.security([0, 5], ch.round_robin([0, 5], 2)) == pytest.approx(1 - 0.19**2)
    assert ch.security([0, 6, 5], ch.round_robin([0, 6, 5], 2)) == pytest.approx(0.5625)
    assert compare(g, 0, 5)["segment_nodes"] == [0, 5]
    g = _diamond((0.3, 0.3), (0.3, 0.3))
    ch = SMRChecker(g, 0, 5)
    assert ch.round_robin([0, 5], 2) == [[[0, 7, 6, 9, 5], [0, 8, 6, 10, 5]]]
    assert ch.security([0, 5], ch.round_robin([0, 5], 2)) == pytest.approx(0.4375)
    assert compare(g, 0, 5)["segment_nodes"] == [0, 6, 5]


def _margin_case(a: float) -> nx.Graph:
    """Direct relays 1 and 2 with p = a: 0-1-5, 0-2-5. The trusted 6 is
    reached from 0 only over 0-3-6 (relay 3 untrusted with p = 1) and joined
    to 5 by 6-7-5 and 6-8-5 (relays 0.5).

    Segmented side: 0 -> 6 has the one path 0-3-6 (security 1), 6 -> 5 has
    6-7-5 and 6-8-5: 1 * (1 - 0.5 * 0.5) = 0.75.
    Direct side, a = 0.5: 0-1-5 ties 0-3-6-7-5 in cost and has fewer hops, then
    0-2-5: 1 - 0.5 * 0.5 = 0.75. For a < 0.5 (by more than the cost
    quantum) the first path is 0-3-6-7-5 (0.5), the second 0-1-5 (a):
    1 - 0.5 * (1 - a) = 0.75 - (0.5 - a) / 2."""
    g = nx.Graph([(0, 1), (1, 5), (0, 2), (2, 5), (0, 3), (3, 6), (6, 7), (7, 5), (6, 8), (8, 5)])
    p = {0: 1.0, 5: 1.0, 6: 1.0, 1: a, 2: a, 3: 1.0, 7: 0.5, 8: 0.5}
    for v in g.nodes:
        g.nodes[v].update(trusted=v == 6, p=p[v])
    for e in g.edges:
        g.edges[e]["pool_bits"] = 100_000
    return g


@pytest.mark.parametrize(
    "a, direct_paths, direct, kept",
    [
        # equal securities, 0.75 == 0.75: not strictly better
        (0.5, [[0, 1, 5], [0, 2, 5]], 0.75, False),
        # -log a within one cost quantum of -log 0.5: the same paths, 1 - (1 - a)^2 = 0.75 - 2e-13:
        # segmenting is better by 2e-13, inside STRICT_MARGIN = 1e-12
        (0.5 - 2e-13, [[0, 1, 5], [0, 2, 5]], 1 - (0.5 + 2e-13) ** 2, False),
        # 0.75 - 1e-8: segmenting is better by 1e-8
        (0.5 - 2e-8, [[0, 3, 6, 7, 5], [0, 1, 5]], 0.75 - 1e-8, True),
    ],
)
def test_step_one_strictly_better_by_the_margin(kernel, a, direct_paths, direct, kept):
    g = _margin_case(a)
    ch = SMRChecker(g, 0, 5)
    assert ch.round_robin([0, 5], 2) == [direct_paths]
    assert ch.security([0, 5], [direct_paths]) == pytest.approx(direct, abs=1e-15)
    assert ch.round_robin([0, 6, 5], 2) == [[[0, 3, 6]], [[6, 7, 5], [6, 8, 5]]]
    assert ch.security([0, 6, 5], ch.round_robin([0, 6, 5], 2)) == 0.75
    assert compare(g, 0, 5)["segment_nodes"] == ([0, 6, 5] if kept else [0, 5])


def test_oracle_security_is_the_brute_force():
    g = _diamond((0.3, 0.3), (0.3, 0.3))
    ch = SMRChecker(g, 0, 5)
    nodes, paths = ch.route()
    route_doc = {"blocked": False, "segment_nodes": nodes, "segments": [{"paths": seg} for seg in paths]}
    assert ch.security(nodes, paths) == brute_security(g, route_doc)
