"""The adversary: seeded compromised sets, an attacker that recomputes keys
from recorded bytes, and empirical secrecy that matches the exact security."""

import networkx as nx
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from checkers import brute_security
from qkdseg import ALGORITHMS, Network, example_network, route, waxman
from qkdseg.keys import KeyStore, attack, draw_compromised, emulate, exposed_nodes, relay
from qkdseg.reconstruction import SCHEMES
from test_keys_relay import networks


def shared_relay_network(trusted_p=0.5):
    """Two paths 0 -> 4 that share the trusted relay 1 (p = trusted_p); private relays 2, 3 (p = 0.5)."""
    g = nx.Graph([(0, 5), (5, 1), (1, 2), (2, 4), (0, 6), (6, 1), (1, 3), (3, 4)])
    for v in g.nodes:
        g.nodes[v]["p"] = 0.5 if v in (2, 3) else 1.0
    g.nodes[1].update(trusted=True, p=trusted_p)
    return Network(g, name="shared")


def test_hand_built_one_relay_reveals_the_key_another_does_not():
    net = shared_relay_network()
    r = route(net, 0, 4, "disjoint", block_bits=128)
    assert sorted(map(list, r.segments[0].paths)) == [[0, 5, 1, 2, 4], [0, 6, 1, 3, 4]]
    res = relay(r, KeyStore(net))
    assert attack(res, [1]).recovered == ((True,),)  # the shared relay saw both pieces
    assert attack(res, [2]).recovered == ((False,),)  # a private relay saw one of two
    assert attack(res, [2, 3]).recovered == ((True,),)
    assert attack(res, []).recovered == ((False,),)


def test_compromised_segment_node_reveals_the_global_key_it_relays():
    net = example_network()
    r = route(net, 0, 7, block_bits=64, epsilon=0.5, reconstruction="paper")
    res = relay(r, KeyStore(net), [None, r.reconstruction])
    assert attack(res, [4]).recovered == ((True,), (True, True))  # chain node 4
    out = attack(res, [5])  # relay 5 carries one piece of segment 1: one paper key has only that piece there
    parts = [k.parts[1] for k in res.plans[1].plan.keys]
    piece_5 = [i for i, path in enumerate(r.segments[1].paths) if 5 in path][0]
    assert out.recovered[0] == (False,)
    assert out.recovered[1] == tuple(p == (piece_5,) for p in parts)


def test_attacker_needs_the_ciphertext_and_a_real_key():
    """Recovery is a byte comparison: a wrong record does not count as success."""
    net = shared_relay_network()
    r = route(net, 0, 4, "disjoint", block_bits=128)
    res = relay(r, KeyStore(net))
    from qkdseg.keys import KeyMaterial
    from types import MappingProxyType

    view = res.views[1]
    forged = {pid: KeyMaterial(bytes(16)) for pid in view.pieces}
    fake = type(view)(view.node, MappingProxyType(forged), view.segment_keys, view.global_keys)
    views = dict(res.views)
    views[1] = fake
    tampered = type(res)(**{**res.__dict__, "views": MappingProxyType(views)})
    assert attack(tampered, [1]).recovered == ((False,),)


def _secret_independently(r_json, keyparts, comp):
    """Secret iff every chain node is safe and every part has a path without a compromised relay."""
    if any(v in comp for v in r_json["segment_nodes"][1:-1]):
        return False
    for j, idx in enumerate(keyparts):
        paths = [r_json["segments"][j]["paths"][i] for i in idx]
        if not any(not (set(p[1:-1]) & comp) for p in paths):
            return False
    return True


@settings(max_examples=40)
@given(networks(), st.sampled_from(sorted(ALGORITHMS)), st.sampled_from(sorted(SCHEMES)), st.randoms(use_true_random=False))
def test_attack_outcome_is_exactly_the_model_event(g, algorithm, scheme, rnd):
    """For any compromised set, the attacker recovers a key iff the model says it is not secret."""
    net = Network(g)
    nodes = list(g.nodes)
    r = route(net, nodes[0], nodes[-1], algorithm, block_bits=8, epsilon=0.3, reconstruction=scheme)
    assume(not r.blocked)
    res = relay(r, KeyStore(net), [None, r.reconstruction])
    exposed = exposed_nodes(net, r)
    rj = r.to_dict()
    for _ in range(4):
        comp = {v for v in exposed if rnd.random() < 0.4}
        out = attack(res, comp)
        for pi, plan in enumerate(res.plans):
            for g_, key in enumerate(plan.plan.keys):
                assert out.recovered[pi][g_] == (not _secret_independently(rj, key.parts, comp))


def test_draws_are_seeded_and_follow_p():
    net = shared_relay_network(trusted_p=0.7)
    r = route(net, 0, 4, "disjoint", block_bits=128)
    nodes = exposed_nodes(net, r)
    assert nodes == [5, 1, 2, 6, 3]  # relays only, in the network's node order; never the ends 0, 4
    a = draw_compromised(net, nodes, 20_000, seed=11)
    assert np.array_equal(a, draw_compromised(net, nodes, 20_000, seed=11))
    assert not np.array_equal(a, draw_compromised(net, nodes, 20_000, seed=12))
    rate = dict(zip(nodes, a.mean(axis=0)))
    assert rate[5] == rate[6] == 0.0  # p = 1: never compromised
    assert abs(rate[1] - 0.3) < 0.015 and abs(rate[2] - 0.5) < 0.015


def _within(out, k=4.0):
    return abs(out["empirical_secrecy"] - out["exact_security"]) <= k * out["standard_error"] + 1e-12


def test_empirical_matches_exact_with_a_shared_trusted_relay():
    """Shared relay: the exact value (0.375) is met, the independence formula (0.4375) is not."""
    net = shared_relay_network()
    out = emulate(net, 0, 4, "disjoint", trials=3000, block_bits=64, seed=5)
    rj = out["route"]
    assert out["exact_security"] == pytest.approx(0.375) and rj["security_independent"] == pytest.approx(0.4375)
    assert out["exact_security"] == pytest.approx(brute_security(net.graph, rj))
    assert _within(out)
    assert abs(out["empirical_secrecy"] - rj["security_independent"]) > 4 * out["standard_error"]
    assert out["keys_identical"] == 3000 and out["bits_consumed"] == 3000 * rj["consumed_bits"]


@pytest.mark.parametrize("algorithm", ["smr", "msp"])
def test_empirical_matches_exact_on_waxman_with_shared_trusted_relays(algorithm):
    net = waxman(100, trusted=15, p=0.6, trusted_p=0.8, seed=4)
    out = emulate(net, 7, 70, algorithm, trials=1500, seed=2)
    rj = out["route"]
    relays = [v for seg in rj["segments"] for p in seg["paths"] for v in p[1:-1]]
    assert len(relays) > len(set(relays)), "this request should share a relay"
    assert out["exact_security"] == pytest.approx(brute_security(net.graph, rj), abs=1e-12)
    assert _within(out) and out["keys_identical"] == 1500
    assert out["bits_consumed"] == 1500 * rj["consumed_bits"]


def test_empirical_matches_exact_without_shared_relays_and_per_key():
    net = example_network()
    out = emulate(net, 0, 7, trials=2000, seed=1, epsilon=0.5, reconstruction="paper")
    assert _within(out) and out["keys_identical"] == 2000
    assert len(out["global_keys"]) == 2
    for k in out["global_keys"]:
        assert abs(k["empirical_secrecy"] - k["exact_security"]) <= 4 * k["standard_error"]
        assert k["keys_identical"] == 2000 and not k["computational"]
    reuse = emulate(net, 0, 7, trials=1000, seed=1, epsilon=0.6, reconstruction="reuse")
    assert all(k["computational"] for k in reuse["global_keys"]) and len(reuse["global_keys"]) >= 3
    for k in reuse["global_keys"]:
        assert abs(k["empirical_secrecy"] - k["exact_security"]) <= 4 * k["standard_error"]


def test_counts_are_reproducible_for_a_seed():
    net = shared_relay_network()
    a = emulate(net, 0, 4, "disjoint", trials=300, seed=9, epsilon=0.2)
    b = emulate(net, 0, 4, "disjoint", trials=300, seed=9, epsilon=0.2)
    c = emulate(net, 0, 4, "disjoint", trials=300, seed=10, epsilon=0.2)
    assert a == b
    assert a["compromised"] != c["compromised"]
    # the outcome is a function of the recorded compromised set
    secret = sum(not ({1} <= set(s) or {2, 3} <= set(s)) for s in a["compromised"])
    assert secret == a["secret_trials"]
