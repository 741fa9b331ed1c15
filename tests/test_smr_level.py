"""``smr-level`` (issues 23 and 39): the requested level at the least consumed key.

- ``search="successive"``: the brute force of ``segment_checker.brute_force_cheapest``
  (every ordered chain of trusted relays x every subset of each segment's step-2 paths,
  exact security by enumeration) finds the same least hops where the search is
  exhaustive (at most 3 trusted relays, ``candidates=None``);
- the wide search (the default) against the brute force of its space:
  ``tests/test_smr_level_wide.py``;
- no delivered key is below epsilon, with every reconstruction scheme
  (Hypothesis, trusted relays at p < 1 included);
- what it saved against the full route is reported.
"""

from __future__ import annotations

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import checkers
import segment_checker as chk
from qkdseg import InvalidRequest, Network, example_network, route, waxman
from qkdseg.reconstruction import SCHEMES

TOL = 1e-12


@st.composite
def small_graphs(draw, trusted_p=(1.0,), max_nodes=11):
    """A connected graph of 4 to 11 nodes, at most 3 trusted relays (p = 1), untrusted p from a small set."""
    n = draw(st.integers(4, max_nodes))
    g = nx.Graph()
    n_trusted = draw(st.integers(0, 3))
    trusted = set(draw(st.lists(st.integers(0, n - 1), min_size=n_trusted, max_size=n_trusted, unique=True)))
    for v in range(n):
        t = v in trusted
        g.add_node(v, trusted=t, p=draw(st.sampled_from(trusted_p)) if t else draw(st.sampled_from([0.5, 0.8, 0.8, 0.9, 1.0, 0.0])))
    for v in range(1, n):
        g.add_edge(v, draw(st.integers(0, v - 1)))
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=n // 2 + 2))
    g.add_edges_from((u, v) for u, v in extra if u != v)
    s, d = draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
    return g, s, d


@settings(max_examples=60, deadline=None)
@given(small_graphs(), st.sampled_from([0.0, 0.5, 0.6, 0.8, 0.9, 0.95, 0.99]), st.sampled_from([None, None, 2]))
def test_equals_brute_force(case, eps, max_paths):
    g, s, d = case
    opts = {} if max_paths is None else {"max_paths": max_paths}
    r = route(Network(g), s, d, "smr-level", epsilon=eps, candidates=None, search="successive", **opts)
    best = chk.brute_force_cheapest(g, s, d, eps, max_paths)
    if best is None:
        assert r.blocked or not r.level["met"]
        assert r.reconstruction.n_keys == 0
        return
    assert r.level["met"] and r.hops == best[0]
    segs = [[list(p) for p in seg.paths] for seg in r.segments]
    checkers.check_paths(g, r.to_dict())
    assert chk.exact_security(g, segs, list(r.segment_nodes[1:-1])) == pytest.approx(r.security, abs=1e-9)
    assert r.security >= eps - TOL and r.security <= best[1] + 1e-9
    assert r.level["saved_bits"] == r.level["full_consumed_bits"] - r.consumed_bits >= 0


@st.composite
def waxman_requests(draw):
    n = draw(st.integers(20, 80))
    trusted = draw(st.integers(0, min(20, n - 2)))
    p = draw(st.sampled_from([0.6, 0.7, 0.8, 0.9, 0.95]))
    trusted_p = draw(st.sampled_from([1.0, 0.97, 0.9]))
    alpha = 0.15 * (100 / n) ** 0.5
    net = waxman(n, trusted=trusted, p=p, trusted_p=trusted_p, alpha=alpha, seed=draw(st.integers(0, 10**6)))
    s, d = draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
    return net, s, d


@settings(max_examples=40, deadline=None)
@given(waxman_requests(), st.floats(0.0, 1.0), st.sampled_from(sorted(SCHEMES)))
def test_no_key_below_epsilon(req, eps, scheme):
    """Met: every scheme delivers at least one key and none below epsilon; the route's exact
    security (independent enumeration when small) meets it; it never consumes more than the
    successive search (nor than the full route over its chain when that one meets epsilon).
    Unmet: no scheme delivers a key, and the successive search meets nothing either."""
    net, s, d = req
    r = route(net, s, d, "smr-level", epsilon=eps, reconstruction=scheme)
    old = route(net, s, d, "smr-level", epsilon=eps, reconstruction=scheme, search="successive")
    if r.blocked:
        return
    keys = r.reconstruction.global_keys
    assert all(k.security >= eps - TOL for k in keys)
    if not r.level["met"]:
        assert not keys and r.level["saved_bits"] == 0 and (old.blocked or not old.level["met"])
        return
    assert len(keys) >= 1 and r.security >= eps - TOL
    assert old.blocked or not old.level["met"] or r.consumed_bits <= old.consumed_bits
    assert r.level["saved_bits"] == r.level["full_consumed_bits"] - r.consumed_bits
    assert r.level["saved_bits"] >= 0 or r.level["full_security"] < eps or r.segment_nodes != old.segment_nodes
    segs = [[list(net.arrays.index[v] for v in p) for p in seg.paths] for seg in r.segments]
    g = nx.convert_node_labels_to_integers(net.graph, ordering="default")
    if len({v for seg in segs for p in seg for v in p[1:-1] if g.nodes[v]["p"] < 1}) <= 14:
        assert chk.exact_security(g, segs, [net.arrays.index[v] for v in r.segment_nodes[1:-1]]) >= eps - TOL


def test_cheaper_than_every_full_route_at_the_level():
    """Quick-start network, 40 requests at 0.9: never more bits per key than smr-exact, smr or
    disjoint on a request both serve, and strictly fewer on most."""
    net = waxman(100, trusted=10, p=0.8, seed=7)
    nodes = list(net.graph.nodes)
    fewer = 0
    for i in range(40):
        s, d = nodes[(7 * i) % 100], nodes[(13 * i + 5) % 100]
        if s == d:
            continue
        lv = route(net, s, d, "smr-level", epsilon=0.9, block_bits=10_000)
        for name in ("smr", "smr-exact", "disjoint"):
            r = route(net, s, d, name, epsilon=0.9, block_bits=10_000)
            if r.reconstruction.n_keys and lv.reconstruction.n_keys:
                assert lv.consumed_bits <= r.consumed_bits_per_key_bit * r.block_bits + 1e-9
                fewer += lv.consumed_bits < r.consumed_bits_per_key_bit * r.block_bits
    assert fewer >= 40


def test_level_is_required_and_checked():
    net = example_network()
    with pytest.raises(InvalidRequest, match="needs a security level"):
        route(net, 0, 7, "smr-level")
    with pytest.raises(InvalidRequest, match="epsilon"):
        route(net, 0, 7, "smr-level", epsilon=1.5)
    with pytest.raises(InvalidRequest, match="search="):
        route(net, 0, 7, "smr-level", epsilon=0.5, search="widest")
    for k in (0, 9, 2.5, True):
        with pytest.raises(InvalidRequest, match="k="):
            route(net, 0, 7, "smr-level", epsilon=0.5, k=k)
    r = route(net, 0, 7, "smr-level", epsilon=0.5)
    assert r.options == {"epsilon": 0.5}
    assert r.to_dict()["level"] == {"epsilon": 0.5, "met": True, "full_consumed_bits": 1_200_000,
                                    "saved_bits": 600_000, "full_security": pytest.approx(0.761856)}
    assert "level" not in route(net, 0, 7, "smr-exact").to_dict()


def test_python_and_numba_kernels_agree():
    net = waxman(60, trusted=8, p=0.8, seed=3)
    a = net.arrays
    from qkdseg.routing import get_algorithm

    f = get_algorithm("smr-level").func
    for s, d in [(0, 59), (5, 40), (11, 22)]:
        assert f(a, s, d, epsilon=0.9, kernel="python") == f(a, s, d, epsilon=0.9, kernel="numba")


def test_cli_route_reports_the_saving_and_needs_epsilon():
    import json

    from typer.testing import CliRunner

    from qkdseg.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["route", "example", "--src", "0", "--dst", "7", "-a", "smr-level", "-e", "0.5"])
    assert res.exit_code == 0, res.output
    assert "met; saved 600000 of 1200000 bits" in res.output
    res = runner.invoke(app, ["route", "example", "--src", "0", "--dst", "7", "-a", "smr-level", "-e", "0.5", "-f", "json"])
    assert json.loads(res.output)["level"]["saved_bits"] == 600000
    res = runner.invoke(app, ["route", "example", "--src", "0", "--dst", "7", "-a", "smr-level"])
    assert res.exit_code == 2 and res.output.strip().splitlines() == [
        "qkdseg: error: --algorithm smr-level needs --epsilon (the request's security level it routes to)"]


@pytest.mark.parametrize("n, trusted, trusted_p, seed", [(40, 6, 1.0, 11), (100, 10, 1.0, 1), (100, 10, 1.0, 7),
                                                         (80, 12, 0.9, 5), (150, 15, 0.97, 2)])
def test_same_routes_as_the_reference(n, trusted, trusted_p, seed):
    """The chain bound only skips routing chains: on seeded Waxman networks the routes (chain, paths
    and so the consumed bits) and the saving are exactly those of the first smr-level
    (``tests/smr_level_reference.py``), at several levels, with the greedy and the exhaustive search."""
    import numpy as np

    import smr_level_reference as ref
    from qkdseg.routing import get_algorithm

    a = waxman(n, trusted=trusted, p=0.8, trusted_p=trusted_p, seed=seed).arrays
    f = get_algorithm("smr-level").func
    rng = np.random.default_rng(seed)
    removed = np.zeros(a.n_links, dtype=bool)
    removed[rng.choice(a.n_links, size=a.n_links // 10, replace=False)] = True
    cases = 0
    for i in range(40):
        s, d = (int(x) for x in rng.choice(n, size=2, replace=False))
        eps = [0.0, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999][i % 7]
        opts = [{}, {"candidates": 3}, {"candidates": None}, {"max_paths": 2}, {"candidates": 6, "exhaustive": 100}][i % 5]
        rl = removed if i % 3 == 0 else None
        assert f(a, s, d, removed_links=rl, epsilon=eps, search="successive", **opts) == \
            ref.smr_level(a, s, d, removed_links=rl, epsilon=eps, **opts)
        cases += 1
    assert cases == 40
