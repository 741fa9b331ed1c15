"""The relay engine on real bytes: both ends agree, pools are debited exactly,
plans in the JSON format are executed, nothing secret reaches the logs."""

import logging
from collections import Counter

import networkx as nx
import pytest
from hypothesis import assume, given, settings, strategies as st

from qkdseg import ALGORITHMS, InvalidRequest, Network, example_network, route
from qkdseg.keys import KeyMaterialShort, KeyStore, Plan, emulate, relay
from qkdseg.reconstruction import SCHEMES
from strategies import small_networks

B = 64


@st.composite
def networks(draw):
    """Small networks whose trusted relays may be compromised too (trusted p < 1)."""
    g = draw(small_networks(min_nodes=3, max_nodes=8))
    for v in g.nodes:
        if g.nodes[v]["trusted"]:
            g.nodes[v]["p"] = draw(st.sampled_from([1.0, 0.9, 0.6]))
    return g


def hop_counts(r):
    c = Counter()
    for seg in r.segments:
        for path in seg.paths:
            for a, b in zip(path, path[1:]):
                c[frozenset((a, b))] += 1
    return c


@settings(max_examples=25)
@given(networks(), st.sampled_from(sorted(ALGORITHMS)), st.sampled_from(sorted(SCHEMES)), st.sampled_from([0.0, 0.3, 0.6, 0.9]))
def test_both_ends_agree_and_pools_pay_exactly_consumed_bits(g, algorithm, scheme, epsilon):
    """Every algorithm and scheme: identical keys at both ends, pools debited hops x B per link."""
    net = Network(g)
    nodes = list(g.nodes)
    r = route(net, nodes[0], nodes[-1], algorithm, block_bits=B, epsilon=epsilon, reconstruction=scheme)
    assume(not r.blocked)
    store = KeyStore(net)
    before = store.levels()
    res = relay(r, store, [None, r.reconstruction])
    assert res.keys_identical and res.pieces_identical
    assert all(all(k.segment_keys_identical) for p in res.plans for k in p.keys)
    assert len(res.plans[1].keys) == r.reconstruction.n_keys
    after = store.levels()
    assert sum(before.values()) - sum(after.values()) == r.consumed_bits == res.bits_consumed
    hops = hop_counts(r)
    for link, level in after.items():
        assert before[link] - level == hops.get(frozenset(link), 0) * B, link
    # every relay recorded the piece it handled, equal to the one sent
    for j, seg in enumerate(r.segments):
        for i, path in enumerate(seg.paths):
            seen = [res.views[v].pieces[(j, i)] for v in path]
            assert all(k == seen[0] for k in seen)


def test_example_route_relays_every_piece_through_its_relays():
    net = example_network()
    r = route(net, 0, 7, block_bits=256)
    res = relay(r, KeyStore(net))
    assert res.keys_identical and res.bits_consumed == r.consumed_bits == 12 * 256
    assert set(res.views[1].pieces) == {(0, 0)} and set(res.views[9].pieces) == {(2, 1)}
    assert set(res.views[3].global_keys) == {(0, 0)} and set(res.views[3].segment_keys) == {(0, 0, 0), (0, 0, 1)}
    assert not res.views[1].global_keys and not res.views[1].segment_keys
    assert res.views[0].segment_keys[(0, 0, 0)] == res.views[3].segment_keys[(0, 0, 0)]
    key = res.plans[0].keys[0]
    assert key.source_key == key.destination_key and key.source_key.bits == 256


def test_engine_compares_instead_of_assuming(monkeypatch):
    """If a link's two ends held different bytes, the engine says the keys differ."""
    net = example_network()
    r = route(net, 0, 7, block_bits=256)
    store = KeyStore(net)
    pool = store.pool((5, 4))
    pool._draw()
    pool._ends[1][0] ^= 0x01  # a one-bit discrepancy at one end of link (4, 5)
    res = relay(r, store)
    assert not res.pieces_identical and not res.keys_identical
    assert not res.plans[0].keys[0].identical
    assert res.plans[0].keys[0].segment_keys_identical == (True, False, True)


def test_hand_built_plans_in_the_json_format():
    net = example_network()
    r = route(net, 0, 7, block_bits=128)
    plan = {
        "scheme": "custom",
        "global_keys": [
            {"bits": 128, "computational": False, "parts": [{"segment": 2, "paths": [1]}, {"segment": 0, "paths": [0]}, {"segment": 1, "paths": [1]}]},
            {"bits": 128, "computational": False, "parts": [{"segment": 0, "paths": [1]}, {"segment": 1, "paths": [0]}, {"segment": 2, "paths": [0]}]},
        ],
    }
    reuse = {
        "scheme": "reuse",
        "global_keys": [
            {"bits": 128, "computational": True, "parts": [{"segment": j, "paths": paths} for j in range(3)]}
            for paths in ([0], [1], [0, 1])
        ],
    }
    res = relay(r, KeyStore(net), [plan, reuse])
    assert res.keys_identical and [len(p.keys) for p in res.plans] == [2, 3]
    assert res.plans[0].plan.keys[0].parts == ((0,), (1,), (1,))
    # reuse keys from overlapping pieces are distinct (HKDF, not XOR)
    k = [o.source_key for o in res.plans[1].keys]
    assert k[0] != k[1] and k[2] != k[0] and k[2] != k[1]
    assert res.bits_consumed == r.consumed_bits  # the plan does not change what the links pay


def test_real_reconstruction_plans_are_executed():
    net = example_network()
    for scheme in SCHEMES:
        r = route(net, 0, 7, block_bits=64, epsilon=0.5, reconstruction=scheme)
        res = relay(r, KeyStore(net), r.reconstruction)
        assert res.keys_identical and len(res.plans[0].keys) == r.reconstruction.n_keys > 0
        assert [k.computational for k in res.plans[0].plan.keys] == [scheme == "reuse"] * r.reconstruction.n_keys


def _key(parts, bits=64, computational=False):
    return {"bits": bits, "computational": computational, "parts": [{"segment": j, "paths": p} for j, p in parts]}


@pytest.mark.parametrize(
    "keys, msg",
    [
        ([_key([(0, [0]), (1, [0])])], r"global key 0: no part for segment\(s\) \[2\]"),
        ([_key([(0, [0]), (1, [0]), (2, [5])])], "global key 0: segment 2 has no path 5"),
        ([_key([(0, [0]), (1, [0]), (2, [0])]), _key([(0, [0]), (1, [1]), (2, [1])])], "global keys 0 and 1 both use piece 0 of segment 0"),
        ([_key([(0, [0]), (1, [0]), (2, [0])], bits=32)], "bits=32 differs from the route's block_bits=64"),
        ([_key([(0, []), (1, [0]), (2, [0])])], "segment 0 has an empty part"),
        ([_key([(0, [0]), (3, [0]), (2, [0])])], "segment 3 is not one of the route's 3 segments"),
    ],
)
def test_bad_plans_are_refused_before_any_debit(keys, msg):
    net = example_network()
    r = route(net, 0, 7, block_bits=64)
    store = KeyStore(net)
    with pytest.raises(InvalidRequest, match=msg):
        relay(r, store, {"scheme": "x", "global_keys": keys})
    assert store.debited_bits == 0


def test_short_key_material_names_the_link_and_changes_no_pool():
    net = example_network()
    r = route(net, 0, 7, block_bits=256)
    store = KeyStore(net)
    store.reserve({(8, 7): 100_000 - 128})  # link (7, 8) keeps 128 bits, the route needs 256
    before = {p.link: (p.level, p.state, bytes(p._ends[0]), p._pending) for p in store.pools()}
    with pytest.raises(KeyMaterialShort, match=r"link \(7, 8\) needs 256 bits, holds 128 \(short by 128\)"):
        relay(r, store)
    after = {p.link: (p.level, p.state, bytes(p._ends[0]), p._pending) for p in store.pools()}
    assert after == before


def test_blocked_route_and_odd_block_size_are_refused():
    g = nx.Graph([(0, 1), (2, 3)])
    net = Network(g, default_p=0.5)
    with pytest.raises(InvalidRequest, match="blocked"):
        relay(route(net, 0, 3), KeyStore(net))
    ex = example_network()
    with pytest.raises(InvalidRequest, match="block_bits=100 must be a positive multiple of 8"):
        relay(route(ex, 0, 7, block_bits=100), KeyStore(ex))


def test_no_key_bytes_in_the_logs(caplog):
    """Search every log record (DEBUG, all loggers) for the bytes and hex of every issued key."""
    net = example_network()
    r = route(net, 0, 7, block_bits=256, epsilon=0.5, reconstruction="reuse")
    with caplog.at_level(logging.DEBUG):
        res = relay(r, KeyStore(net), [None, r.reconstruction])
        emulate(net, 0, 7, trials=5, seed=3, epsilon=0.5)
    assert any(rec.name == "qkdseg.keys" for rec in caplog.records)
    secrets_ = []
    for plan in res.plans:
        for k in plan.keys:
            secrets_ += [k.source_key, k.destination_key]
    for view in res.views.values():
        secrets_ += [*view.pieces.values(), *view.segment_keys.values(), *view.global_keys.values()]
    log = caplog.text + "".join(repr(rec.args) for rec in caplog.records)
    for k in secrets_:
        raw = k.reveal()
        for needle in (raw.hex(), raw.hex().upper(), repr(raw)[2:-1], raw.decode("latin-1"), raw[:8].hex()):
            assert needle not in log
    assert "masked" not in log  # keys are not even mentioned by repr


def test_a_link_used_by_two_paths_pays_twice():
    """Hand-built route whose two paths share every link: each use takes its own B bits."""
    from dataclasses import replace

    from qkdseg.api import Segment

    net = example_network()
    r = route(net, 0, 7, "single", block_bits=64)
    path = r.segments[0].paths[0]
    twice = replace(r, segments=(Segment(0, 7, (path, path), 0.0),), consumed_bits=2 * (len(path) - 1) * 64)
    store = KeyStore(net)
    res = relay(twice, store)
    assert res.keys_identical and res.bits_consumed == twice.consumed_bits
    for a, b in zip(path, path[1:]):
        assert store.level((a, b)) == 100_000 - 128
    # XOR of the two pieces is secret iff one path is: both pieces share all relays here
    from qkdseg.keys import attack

    assert attack(res, [path[1]]).recovered == ((True,),)
