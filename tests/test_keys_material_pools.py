"""Key material (masked, constant-time) and link key pools (bytes, states, atomic reserve)."""

import logging

import networkx as nx
import pytest
from hypothesis import given, strategies as st

from qkdseg import InvalidRequest, Network, example_network
from qkdseg.keys import KeyMaterial, KeyMaterialShort, KeyStore, LinkKeyPool, PoolState, check_block_bits


# -- KeyMaterial -----------------------------------------------------------------
def test_key_material_is_masked_everywhere():
    k = KeyMaterial(bytes(range(32)))
    for text in (repr(k), str(k), f"{k}", "%s" % k, repr([k]), repr({"k": k})):
        assert "masked" in text and "256 bits" in text
        assert bytes(range(32)).hex() not in text and "\\x01" not in text
    assert len(k) == 256 and k.bits == 256 and k.reveal() == bytes(range(32))


def test_key_material_compare_xor_and_hash():
    a, b = KeyMaterial(b"\x0f\xf0"), KeyMaterial(b"\xff\x00")
    assert (a ^ b).reveal() == b"\xf0\xf0" and a ^ b ^ b == a
    assert a != b and a == KeyMaterial(bytearray(b"\x0f\xf0"))
    with pytest.raises(TypeError):
        hash(a)
    with pytest.raises(ValueError, match="16 and 8 bits"):
        a ^ KeyMaterial(b"\x00")


def test_random_key_material_is_fresh():
    assert KeyMaterial.random(256) != KeyMaterial.random(256)
    assert len(KeyMaterial.random(8)) == 8


@pytest.mark.parametrize("bad", [0, -8, 100, 7.0, True, "256", None])
def test_block_bits_must_be_whole_bytes(bad):
    with pytest.raises(InvalidRequest, match=f"block_bits={bad!r} must be a positive multiple of 8"):
        check_block_bits(bad)


# -- LinkKeyPool -----------------------------------------------------------------
def test_pool_states_follow_qkdnetsim():
    """READY -> WARNING when drained below Mthr, EMPTY at Mmin, CHARGING when refilled, READY again at Mthr."""
    pool = LinkKeyPool(("a", "b"), 800, mthr=400, mmin=80)
    seen = [pool.state]
    for nbytes in (40, 20, 30):  # 800 -> 480 -> 320 -> 80
        pool._debit(nbytes)
        seen.append(pool.state)
    pool.charge(160)  # 240
    seen.append(pool.state)
    pool.charge(160)  # 400
    seen.append(pool.state)
    pool.charge(10_000)  # capped at Mmax
    assert pool.level == 800
    assert [s.name for s in seen] == ["READY", "READY", "WARNING", "EMPTY", "CHARGING", "READY"]
    assert pool.ends_identical()


def test_pool_ends_hold_identical_random_bytes():
    pool = LinkKeyPool((0, 1), 1024)
    a, b = pool._debit(64)
    assert a == b and a.reveal() != bytes(64)
    assert pool.ends_identical() and len(pool._ends[0]) == len(pool._ends[1]) == (1024 - 512) // 8


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(mmax=-1), "Mmax=-1"),
        (dict(mmax=100, mthr=200), "Mmin <= Mthr <= Mmax"),
        (dict(mmax=100, mmin=50, mthr=10), "Mmin <= Mthr <= Mmax"),
        (dict(mmax=100, level=101), "exceeds Mmax"),
    ],
)
def test_pool_rejects_bad_thresholds(kwargs, msg):
    with pytest.raises(InvalidRequest, match=r"link \('u', 'v'\).*" + msg.replace("(", r"\(")):
        LinkKeyPool(("u", "v"), **kwargs)


def test_every_change_is_logged_old_to_new(caplog):
    store = KeyStore(example_network())
    with caplog.at_level(logging.DEBUG, logger="qkdseg.keys"):
        store.reserve({(1, 0): 256})
        store.pool((0, 1)).charge(128)
    msgs = [r.getMessage() for r in caplog.records if r.name == "qkdseg.keys"]
    assert msgs == [
        "link (0, 1): level 100000 -> 99744, READY -> READY (reserve)",
        "link (0, 1): level 99744 -> 99872, READY -> READY (charge)",
    ]


# -- KeyStore.reserve --------------------------------------------------------------
def _levels(store):
    return {p.link: (p.level, p.state) for p in store.pools()}


def test_reserve_is_atomic_when_one_link_is_short():
    net = example_network()
    store = KeyStore(net)
    store.reserve({(3, 5): 99_744})  # leave 256 bits on (3, 5)
    before = _levels(store)
    debited = store.debited_bits
    with pytest.raises(KeyMaterialShort) as err:
        store.reserve({(0, 1): 512, (1, 3): 512, (5, 3): 512, (5, 4): 512})
    msg = str(err.value)
    assert "link (3, 5) needs 512 bits, holds 256 (short by 256)" in msg and "no pool was debited" in msg
    assert err.value.shortfalls == {(3, 5): (512, 256)}
    assert _levels(store) == before and store.debited_bits == debited
    # the same request without the short link goes through, and debits every link
    store.reserve({(0, 1): 512, (1, 3): 512, (5, 4): 512})
    assert store.level((0, 1)) == store.level((3, 1)) == store.level((4, 5)) == 100_000 - 512


def test_reserve_sums_both_orientations_and_checks_the_sum():
    store = KeyStore(example_network())
    with pytest.raises(KeyMaterialShort, match=r"link \(0, 1\) needs 100008 bits, holds 100000"):
        store.reserve({(0, 1): 50_000, (1, 0): 50_008})
    assert store.level((0, 1)) == 100_000
    pads = store.reserve({(0, 1): 64, (1, 0): 64})
    assert list(pads) == [(0, 1)] and pads[(0, 1)].copies[0].bits == 128


@pytest.mark.parametrize(
    "request_, msg",
    [
        ({(0, 7): 8}, r"link \(0, 7\) is not in network"),
        ({(0, 1): 12}, r"link \(0, 1\): requested bits=12 must be a non-negative multiple of 8"),
        ({(0, 1): 8, (0, "x"): 8}, r"link \(0, 'x'\) is not in network"),
    ],
)
def test_reserve_rejects_bad_requests_without_debiting(request_, msg):
    store = KeyStore(example_network())
    with pytest.raises(InvalidRequest, match=msg):
        store.reserve(request_)
    assert store.level((0, 1)) == 100_000 and store.debited_bits == 0


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 40)), max_size=12))
def test_reserve_conserves_bits(requests):
    """Level drops equal debited bits; a refused request changes nothing."""
    g = nx.path_graph(4)
    nx.set_edge_attributes(g, 800, "pool_bits")
    store = KeyStore(Network(g, default_p=0.5))
    links = [(0, 1), (1, 2), (2, 3)]
    for k, nbytes in requests:
        req = {links[k]: 8 * nbytes, links[(k + 1) % 3]: 8}
        before = store.levels()
        try:
            store.reserve(req)
        except KeyMaterialShort:
            assert store.levels() == before
            continue
        after = store.levels()
        assert sum(before.values()) - sum(after.values()) == sum(req.values())
    assert 3 * 800 - sum(store.levels().values()) == store.debited_bits
    assert all(p.ends_identical() and p.state in PoolState for p in store.pools())
