"""Key reconstruction (docs/model.md section 4): the four schemes, the paper's
worked example, optimal against paper and against brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconstruction_checker import Net, exact_security as checker_exact
from qkdseg import InvalidRequest, UnknownAlgorithm, example_network, route
from qkdseg.reconstruction import (
    SCHEMES,
    balanced_matching,
    derive_key,
    optimal,
    paper,
    reconstruct,
    reuse,
    xor_all,
)


def instance(qs_per_segment):
    """Segment nodes 0..k, one private relay per piece with p = q."""
    k = len(qs_per_segment)
    p = [1.0] * (k + 1)
    segments = []
    for j, qs in enumerate(qs_per_segment):
        seg = []
        for q in qs:
            p.append(q)
            seg.append([j, len(p) - 1, j + 1])
        segments.append(seg)
    return np.array(p), segments, list(range(1, k))


def as_net(p):
    return Net({i: {"p": float(x), "trusted": x == 1.0} for i, x in enumerate(p)}, set())


def parts_of(key):
    return [list(part.paths) for part in key.parts]


def recompute(p, segments, chain, key):
    groups = [[segments[part.segment][i] for i in part.paths] for part in key.parts]
    return checker_exact(as_net(p), groups, list(chain))


def check_result(p, segments, chain, res, eps):
    used = set()
    for key in res.global_keys:
        assert [part.segment for part in key.parts] == list(range(len(segments)))
        assert key.security == pytest.approx(recompute(p, segments, chain, key), abs=1e-12)
        assert key.security >= eps - 1e-12
        if res.scheme != "reuse":
            for part in key.parts:
                for i in part.paths:
                    assert (part.segment, i) not in used
                    used.add((part.segment, i))
    assert res.key_bits == res.n_keys * res.block_bits


# -- the paper's greedy, worked by hand in docs/reconstruction.md ---------------
def test_paper_hand_worked_example():
    p, segs, chain = instance([[0.9, 0.8, 0.5, 0.4], [0.9, 0.6, 0.5]])
    r = paper(p, segs, chain, epsilon=0.7, block_bits=100_000)
    # c = 3: segment 1 merges 0.5 and 0.4 -> 0.7; matching 0.9*0.5, 0.8*0.6, 0.7*0.9.
    # c = 2: segment 1 merges 0.7 and 0.8 -> 0.94, segment 2 merges 0.5 and 0.6 -> 0.8;
    #        matching 0.94*0.8 = 0.752 and 0.9*0.9 = 0.81: both >= 0.7, stop.
    assert [round(x["weakest"], 12) for x in r.details["rounds"]] == [0.45, 0.752]
    assert [round(k.security, 12) for k in r.global_keys] == [0.81, 0.752]
    assert [parts_of(k) for k in r.global_keys] == [[[0], [0]], [[1, 2, 3], [1, 2]]]
    assert r.key_bits == 200_000
    check_result(p, segs, chain, r, 0.7)
    # optimal cannot do better here: segment 2's 0.5 piece needs a partner above 1.
    assert optimal(p, segs, chain, 0.7, 100_000).n_keys == 2


def test_paper_greedy_is_not_optimal_example():
    # docs/reconstruction.md: the greedy merges the two 0.3 pieces first and ends with 1 key;
    # pairing each 0.6 with a 0.3 gives two keys of 1 - 0.4 * 0.7 = 0.72.
    p, segs, chain = instance([[0.6, 0.6, 0.3, 0.3]])
    a = paper(p, segs, chain, 0.7, 1)
    assert [round(x["weakest"], 12) for x in a.details["rounds"]] == [0.3, 0.51, 0.6, 0.9216]
    assert a.n_keys == 1
    b = optimal(p, segs, chain, 0.7, 1)
    assert b.n_keys == 2 and b.optimal is True
    assert sorted(parts_of(k)[0] for k in b.global_keys) in ([[0, 2], [1, 3]], [[0, 3], [1, 2]])
    assert all(k.security == pytest.approx(0.72) for k in b.global_keys)


def test_balanced_matching_three_segments():
    m = balanced_matching([[(0.9, "a"), (0.6, "b")], [(0.5, "x"), (0.8, "y")], [(0.7, "u"), (0.95, "v")]])
    # Fold: a*x=0.45, b*y=0.48; then strongest (b*y) with the weakest u, then a*x with v.
    assert [(round(s, 6), k) for s, k in m] == [(0.336, ["b", "y", "u"]), (0.4275, ["a", "x", "v"])]
    with pytest.raises(ValueError):
        balanced_matching([[(0.9, "a")], []])


def test_paper_single_segment_stops_at_first_count_meeting_eps():
    p, segs, chain = instance([[0.95, 0.9, 0.5, 0.5, 0.5]])
    r = paper(p, segs, chain, 0.7, 10)
    # c=5 fails (0.5); c=4: 0.5+0.5 -> 0.75 but a 0.5 is left; c=3: 0.5+0.75 -> 0.875: keys 0.95, 0.9, 0.875.
    assert sorted(round(k.security, 9) for k in r.global_keys) == [0.875, 0.9, 0.95]


def test_no_key_when_even_xor_all_fails():
    p, segs, chain = instance([[0.3, 0.2], [0.5]])
    for name in SCHEMES:
        r = SCHEMES[name](p, segs, chain, 0.9, 8)
        assert r.n_keys == 0 and r.key_bits == 0, name


def test_xor_all_is_end_to_end_security():
    net = example_network()
    r = route(net, 0, 7, epsilon=0.8, reconstruction="xor-all")
    assert r.reconstruction.n_keys == 1
    assert r.reconstruction.global_keys[0].security == pytest.approx(r.security, abs=1e-15)
    r = route(net, 0, 7, epsilon=0.9, reconstruction="xor-all")
    assert r.reconstruction.n_keys == 0


# -- optimal -------------------------------------------------------------------
def brute_force_max_keys(p, segments, chain, eps) -> int:
    """Most disjoint keys meeting eps, by trying every labelling of the pieces."""
    net = as_net(p)
    pieces = [(j, i) for j, seg in enumerate(segments) for i in range(len(seg))]
    for K in range(min(len(s) for s in segments), 0, -1):
        for labels in itertools.product(range(K + 1), repeat=len(pieces)):
            groups = [[[] for _ in segments] for _ in range(K)]
            for (j, i), lab in zip(pieces, labels):
                if lab:
                    groups[lab - 1][j].append(segments[j][i])
            if all(all(g) for g in groups) and all(checker_exact(net, g, list(chain)) >= eps - 1e-12 for g in groups):
                return K
    return 0


q_values = st.sampled_from([0.3, 0.5, 0.6, 0.64, 0.7, 0.8, 0.9, 0.95])


@settings(max_examples=40, deadline=None)
@given(
    qs=st.lists(st.lists(q_values, min_size=1, max_size=3), min_size=1, max_size=3).filter(
        lambda qs: sum(map(len, qs)) <= 6
    ),
    eps=st.sampled_from([0.3, 0.5, 0.7, 0.8, 0.9]),
)
def test_optimal_equals_brute_force_on_tiny_instances(qs, eps):
    p, segs, chain = instance(qs)
    res = optimal(p, segs, chain, eps, 1)
    assert res.optimal is True
    assert res.n_keys == brute_force_max_keys(p, segs, chain, eps)
    check_result(p, segs, chain, res, eps)


@settings(max_examples=60, deadline=None)
@given(
    qs=st.lists(st.lists(st.floats(0.05, 1.0), min_size=1, max_size=5), min_size=1, max_size=4),
    eps=st.floats(0.0, 1.0),
)
def test_optimal_at_least_paper_and_every_key_meets_eps(qs, eps):
    p, segs, chain = instance(qs)
    a = paper(p, segs, chain, eps, 3)
    b = optimal(p, segs, chain, eps, 3, time_limit=0.5)
    assert b.n_keys >= a.n_keys
    for res in (a, b, reuse(p, segs, chain, eps, 3), xor_all(p, segs, chain, eps, 3)):
        check_result(p, segs, chain, res, eps)


def shared_instance():
    """Relays shared within a segment (node 9) and between segments (node 8)
    and a risky segment node (1): products are not exact here."""
    p = np.array([1.0, 0.97, 1.0, 0.6, 0.7, 0.5, 0.8, 0.9, 0.95, 0.9])
    seg0 = [[0, 3, 9, 1], [0, 4, 9, 1], [0, 8, 1], [0, 5, 1]]
    seg1 = [[1, 6, 8, 2], [1, 7, 2], [1, 5, 9, 2]]  # 5 and 9 shared across segments too
    return p, [seg0, seg1], [1]


@pytest.mark.parametrize("eps", [0.3, 0.45, 0.6, 0.75, 0.85])
def test_optimal_exact_with_shared_relays(eps):
    p, segs, chain = shared_instance()
    res = optimal(p, segs, chain, eps, 1)
    assert res.optimal is True
    assert res.n_keys == brute_force_max_keys(p, segs, chain, eps)
    assert res.n_keys >= paper(p, segs, chain, eps, 1).n_keys
    for scheme in SCHEMES.values():
        check_result(p, segs, chain, scheme(p, segs, chain, eps, 1), eps)


def test_optimal_caps_say_so_and_fall_back_to_paper():
    p, segs, chain = instance([[0.6, 0.61, 0.62, 0.63, 0.3, 0.31], [0.9, 0.8, 0.7]])
    base = paper(p, segs, chain, 0.5, 1)
    capped = optimal(p, segs, chain, 0.5, 1, max_choices=8)
    assert capped.optimal is False and "size cap" in capped.status
    assert capped.n_keys >= base.n_keys
    assert [parts_of(k) for k in capped.global_keys] == [parts_of(k) for k in base.global_keys]
    timed = optimal(p, segs, chain, 0.5, 1, time_limit=0.0)
    assert timed.optimal is False and "time cap" in timed.status and timed.n_keys >= base.n_keys
    cols = optimal(p, segs, chain, 0.5, 1, max_columns=1)
    assert cols.optimal is False and "max_columns" in cols.status
    full = optimal(p, segs, chain, 0.5, 1)
    assert full.optimal is True and full.n_keys >= base.n_keys
    assert full.to_dict()["optimal"] is True


def test_optimal_groups_interchangeable_pieces():
    # 12 equal pieces: 2^12 subsets, but only 13 count vectors; exact and fast.
    p, segs, chain = instance([[0.5] * 12])
    res = optimal(p, segs, chain, 0.8, 1)  # 1 - 0.5^3 = 0.875 >= 0.8 > 0.75
    assert res.optimal is True and res.n_keys == 4


# -- reuse -----------------------------------------------------------------------
def test_reuse_keys_are_computational_with_it_bound():
    p, segs, chain = instance([[0.8, 0.7, 0.6], [0.9, 0.85]])
    r = reuse(p, segs, chain, 0.6, 100_000)
    assert r.n_keys > paper(p, segs, chain, 0.6, 100_000).n_keys
    assert all(k.computational for k in r.global_keys)
    assert r.information_theoretic_bound_bits == 2 * 100_000
    d = r.to_dict()
    assert d["information_theoretic_bound_bits"] == 200_000 and d["global_keys"][0]["computational"] is True
    check_result(p, segs, chain, r, 0.6)
    assert len({tuple(map(tuple, parts_of(k))) for k in r.global_keys}) == r.n_keys


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF with SHA-256, from the RFC's text (hmac and hashlib only)."""
    import hashlib
    import hmac

    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()  # Extract; no salt: HashLen zeros
    okm, t, i = b"", b"", 1
    while len(okm) < length:  # Expand: T(i) = HMAC(PRK, T(i-1) | info | i)
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        okm += t
        i += 1
    return okm[:length]


#: RFC 5869 appendix A, test cases 1-3 (SHA-256): IKM, salt, info, L, OKM.
RFC5869 = [
    ("0b" * 22, "000102030405060708090a0b0c", "f0f1f2f3f4f5f6f7f8f9", 42,
     "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
    ("".join(f"{i:02x}" for i in range(0x00, 0x50)), "".join(f"{i:02x}" for i in range(0x60, 0xB0)),
     "".join(f"{i:02x}" for i in range(0xB0, 0x100)), 82,
     "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09"
     "da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87"),
    ("0b" * 22, "", "", 42,
     "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"),
]


@pytest.mark.parametrize("case", range(3))
def test_hkdf_rfc5869_vectors(case):
    """The reference HKDF reproduces RFC 5869's known answers, and so does the
    library HKDF that derive_key uses."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    ikm, salt, info, length, okm = RFC5869[case]
    ikm, salt, info, okm = bytes.fromhex(ikm), bytes.fromhex(salt), bytes.fromhex(info), bytes.fromhex(okm)
    assert hkdf_sha256(ikm, salt, info, length) == okm
    assert HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm) == okm


def test_derive_key_hkdf():
    """derive_key is HKDF-SHA256 with no salt over the length-prefixed pieces,
    in blocks of at most 8160 bytes with info || block number (its docstring),
    checked against the RFC 5869 reference above."""
    a, b = bytes(range(32)), bytes(range(32, 64))
    ikm = len(a).to_bytes(4, "big") + a + len(b).to_bytes(4, "big") + b
    k = derive_key([a, b], 100_000)  # longer than one HKDF-SHA256 output (8160 bytes)
    assert len(k) == 12_500
    blocks = [hkdf_sha256(ikm, b"", b"qkdseg-reuse" + i.to_bytes(4, "big"), n) for i, n in enumerate((8160, 4340))]
    assert k == b"".join(blocks)
    assert k != derive_key([b, a], 100_000) and k != derive_key([a], 100_000)
    short = derive_key([a], 12)  # 2 bytes, the last 4 bits cleared
    ref = hkdf_sha256(len(a).to_bytes(4, "big") + a, b"", b"qkdseg-reuse" + bytes(4), 2)
    assert short == bytes([ref[0], ref[1] & 0xF0])
    assert derive_key([a], 0) == b""


# -- through route() ---------------------------------------------------------------
def test_route_without_epsilon_is_unchanged():
    r = route(example_network(), 0, 7)
    assert r.reconstruction is None and r.key_bits is None
    assert "reconstruction" not in r.to_dict()
    assert "security_claimed" not in r.to_dict()


def test_route_reconstruction_json_contract():
    r = route(example_network(), 0, 7, epsilon=0.5)
    d = r.to_dict()["reconstruction"]
    assert d["scheme"] == "paper" and d["epsilon"] == 0.5 and d["key_bits"] == 200_000
    assert d["global_keys"][0]["parts"] == [{"segment": j, "paths": [0]} for j in range(3)]
    assert set(d["global_keys"][0]) == {"security", "bits", "computational", "parts"}
    assert d["consumed_bits_per_key_bit"] == 6.0
    m = r.metrics()
    assert m["key_bits"] == 200_000 and m["global_keys"] == 2 and m["consumed_bits_per_key_bit"] == 6.0


def test_route_reconstruction_errors():
    net = example_network()
    with pytest.raises(InvalidRequest, match="epsilon"):
        route(net, 0, 7, reconstruction="paper")
    with pytest.raises(InvalidRequest, match="epsilon"):
        route(net, 0, 7, epsilon=1.5)
    with pytest.raises(InvalidRequest, match="epsilon"):
        route(net, 0, 7, epsilon=True)
    with pytest.raises(UnknownAlgorithm, match="known: xor-all, paper, optimal, reuse"):
        route(net, 0, 7, epsilon=0.5, reconstruction="magic")
    with pytest.raises(InvalidRequest, match="no option 'time_limit'"):
        route(net, 0, 7, epsilon=0.5, reconstruction="paper", reconstruction_options={"time_limit": 1})
    r = route(net, 0, 7, epsilon=0.5, reconstruction="optimal", reconstruction_options={"time_limit": 5.0})
    assert r.reconstruction.optimal is True
    with pytest.raises(InvalidRequest):
        reconstruct("paper", net.arrays.p, [], (), -0.1, 1)


def test_blocked_route_has_no_key():
    import networkx as nx

    from qkdseg import Network

    g = nx.Graph()
    g.add_nodes_from([0, 1, 2])
    g.add_edge(0, 1)
    net = Network(g, default_p=0.9)
    for name in SCHEMES:
        r = route(net, 0, 2, epsilon=0.5, reconstruction=name)
        assert r.blocked and r.reconstruction.n_keys == 0 and r.key_bits == 0
        assert r.consumed_bits_per_key_bit is None
        assert r.metrics()["blocked"] is True


def test_scheme_results_are_frozen():
    p, segs, chain = instance([[0.9, 0.8]])
    r = paper(p, segs, chain, 0.5, 1)
    with pytest.raises(AttributeError):
        r.scheme = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        r.global_keys[0].security = 1.0  # type: ignore[misc]
    assert math.isclose(sum(k.security for k in r.global_keys), 1.7)
