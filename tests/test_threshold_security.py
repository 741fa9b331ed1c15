"""Exact security under threshold sharing against brute force over relay states, and route()/CLI (issue 40)."""

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from checkers import brute_state_security, four_path_network
from checkers import threshold_brute as vector_brute
from qkdseg import example_network, exact_security, route
from qkdseg.cli import app
from qkdseg.errors import InvalidRequest
from qkdseg.reconstruction.shamir import SharesDoNotDecode, combine, split
from qkdseg.reconstruction.xor_all import xor_all
from qkdseg.security import threshold_security
from qkdseg.security.threshold import threshold_independent


@st.composite
def shared_routes(draw):
    """Random segments of random paths over a small relay pool (relays shared within and across segments, risky
    chain nodes that may also relay), and a tolerance."""
    n = draw(st.integers(3, 9))
    p = np.array(draw(st.lists(st.sampled_from([0.0, 0.3, 0.5, 0.8, 1.0]), min_size=n, max_size=n)))
    segments = [[[-1, *draw(st.lists(st.integers(0, n - 1), max_size=3, unique=True)), -2]
                 for _ in range(draw(st.integers(1, 5)))] for _ in range(draw(st.integers(1, 3)))]
    chain = draw(st.lists(st.integers(0, n - 1), max_size=2, unique=True))
    return p, segments, chain, draw(st.integers(0, 3))


@settings(max_examples=150, deadline=None)
@given(shared_routes())
def test_threshold_security_matches_brute_force(case):
    p, segments, chain, t = case
    pd = dict(enumerate(p))
    want = vector_brute(pd, segments, chain, t)
    assert threshold_security(p, segments, chain, tolerate=t) == pytest.approx(want, abs=1e-12)
    if t:  # max_shared=0: every linked component by the path-state method instead of conditioning
        assert threshold_security(p, segments, chain, tolerate=t, max_shared=0) == pytest.approx(want, abs=1e-12)
    # the xor-all global key under this sharing carries the same number (0 parts refused there: m <= T gives 0)
    key = xor_all(p, segments, chain, epsilon=0.0, block_bits=8, tolerate=t).global_keys
    assert (key[0].security if key else 0.0) == pytest.approx(want, abs=1e-12)
    if t == 0:  # XOR is the 0-tolerant case of both the formula and the brute force
        assert want == pytest.approx(brute_state_security(pd, segments, chain), abs=1e-12)
        assert threshold_security(p, segments, chain) == exact_security(p, segments, chain)
    relays = [v for seg in segments for path in seg for v in path[1:-1]]
    if len(set(relays)) == len(relays) and not set(relays) & set(chain):  # no relay shared: the product is exact
        assert threshold_independent(p, segments, chain, t) == pytest.approx(want, abs=1e-12)


def test_compromised_exactly_when_the_adversary_can_combine_k_shares():
    """The event the formula counts is the code's: the shares of the compromised paths rebuild the secret iff
    there are at least k of them."""
    secret = bytes(range(16))
    for m, t in [(3, 1), (4, 1), (4, 2), (5, 3)]:
        shares = split(secret, m, t, rng=np.random.default_rng(m + t))
        for held in itertools.chain.from_iterable(itertools.combinations(range(m), r) for r in range(m + 1)):
            seen = [shares[i] if i in held else None for i in range(m)]
            if len(held) >= m - t:
                assert combine(seen, t).secret == secret
            else:
                with pytest.raises(SharesDoNotDecode):
                    combine(seen, t)


def test_route_threshold_security_and_json():
    net = four_path_network()
    x = route(net, "s", "d")
    r = route(net, "s", "d", sharing="threshold", tolerate=1)
    assert [len(s.paths) for s in r.segments] == [4, 4] and r.paths == x.paths
    q = 0.8 * 0.8
    seg = sum(math.comb(4, i) * q**i * (1 - q) ** (4 - i) for i in range(2, 5))  # at least 2 of 4 intact
    assert [s.security for s in r.segments] == pytest.approx([seg, seg], abs=1e-12)
    assert r.security == pytest.approx(seg * seg, abs=1e-12) and r.security < x.security
    d = r.to_dict()
    assert (d["sharing"], d["tolerate"]) == ("threshold", 1) and (x.to_dict()["sharing"], x.to_dict()["tolerate"]) == ("xor", 0)
    r2 = route(net, "s", "d", sharing="threshold", tolerate=3, epsilon=0.0)
    assert r2.reconstruction.scheme == "xor-all" and r2.reconstruction.global_keys[0].security == pytest.approx(r2.security)
    assert [p.paths for p in r2.reconstruction.global_keys[0].parts] == [(0, 1, 2, 3), (0, 1, 2, 3)]


def test_route_refusals_name_the_segment():
    net = example_network()  # two paths per segment
    with pytest.raises(InvalidRequest, match=r"segment 1 \(0 -> 3\) has 2 paths: threshold sharing with tolerate 2 needs at least 3"):
        route(net, 0, 7, sharing="threshold", tolerate=2)
    r = route(net, 0, 7, sharing="threshold", tolerate=1)  # 1-of-2: each path carries the key; both must be intact
    assert r.security == pytest.approx((0.8 * 0.8) ** 3, abs=1e-12) and route(net, 0, 7).security == pytest.approx(0.96**3)
    with pytest.raises(InvalidRequest, match="sharing='threshold' needs tolerate >= 1"):
        route(net, 0, 7, sharing="threshold")
    with pytest.raises(InvalidRequest, match="tolerate=1 needs sharing='threshold'"):
        route(net, 0, 7, tolerate=1)
    with pytest.raises(InvalidRequest, match="sharing='shamir' must be one of xor, threshold"):
        route(net, 0, 7, sharing="shamir")
    with pytest.raises(InvalidRequest, match="reconstruction paper does not share yet"):
        route(net, 0, 7, sharing="threshold", tolerate=1, epsilon=0.5, reconstruction="paper")
    assert issubclass(InvalidRequest, ValueError)


def test_cli_route_sharing(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["route", "example", "--src", "0", "--dst", "7", "--sharing", "threshold", "--tolerate", "2"])
    assert res.exit_code == 2
    assert "qkdseg: error: segment 1 (0 -> 3) has 2 paths" in res.output and len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, ["route", "example", "--src", "0", "--dst", "7", "--sharing", "threshold", "--tolerate", "1",
                              "-f", "json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["sharing"] == "threshold" and d["tolerate"] == 1
    res = runner.invoke(app, ["route", "example", "--src", "0", "--dst", "7", "--sharing", "threshold", "--tolerate", "1"])
    assert res.exit_code == 0 and "sharing              threshold, tolerate 1" in res.output


def test_limits_and_blocked_routes():
    from qkdseg.errors import SecurityError

    def two_by_two(n):  # n relays, each on two of four paths: two groups of n / 2
        return [[[-1, *range(g, n, 2), -2] for g in (0, 0, 1, 1)]]

    p = np.full(25, 0.5)
    # two intact paths of four: one of the two groups all safe (each group's paths fail together); 24 shared
    # relays on 4 paths: the path-state method, exact
    assert threshold_security(p, two_by_two(24), tolerate=1) == pytest.approx(1 - (1 - 0.5**12) ** 2, abs=1e-12)
    assert threshold_security(p, two_by_two(12), tolerate=1) == pytest.approx(1 - (1 - 0.5**6) ** 2, abs=1e-12)
    chain_of_paths = [[[-1, i, i + 1, -2] for i in range(24)]]  # 23 shared relays on 24 paths: refused, no state
    with pytest.raises(SecurityError, match="23 relays are shared between 24 paths"):
        threshold_security(p, chain_of_paths, tolerate=1)
    r = route(example_network(), 0, 7, block_bits=10**9, sharing="threshold", tolerate=1)
    assert r.blocked and (r.to_dict()["sharing"], r.to_dict()["tolerate"]) == ("threshold", 1)


def test_routes_qkdseg_returns_against_brute_force():
    """Routes of MSP with shared relays and of SMR on small Waxman networks whose trusted relays have p < 1:
    Route.security under threshold sharing equals enumerating every relay state."""
    from qkdseg import waxman

    checked = with_shared = 0
    for seed in range(12):
        net = waxman(24, trusted=5, p=0.7, trusted_p=0.9, alpha=0.6, beta=0.6, seed=seed)
        pmap = dict(zip(net.arrays.node_ids, net.arrays.p.tolist()))
        for alg, opts in (("msp", {"shared_relays": True, "seed": seed}), ("smr", {})):
            for t in (1, 2):
                try:
                    r = route(net, 0, 23, alg, sharing="threshold", tolerate=t, **opts)
                except InvalidRequest:
                    continue  # a segment with too few paths for this tolerance
                segs = [list(s.paths) for s in r.segments]
                risky = {v for s in segs for path in s for v in path[1:-1] if pmap[v] < 1}
                if len(risky) > 15:
                    continue
                assert r.security == pytest.approx(vector_brute(pmap, segs, r.segment_nodes[1:-1], t), abs=1e-12)
                checked += 1
                on = [v for s in segs for path in s for v in set(path[1:-1]) if v in risky]
                with_shared += len(on) > len(set(on))
    assert checked >= 10 and with_shared >= 3
