"""Threshold sharing on real bytes (issue 40): pieces relayed, shares deleted and altered, the adversary's attack."""

import json

import pytest
from typer.testing import CliRunner

from checkers import four_path_network
from qkdseg import route
from qkdseg.cli import app
from qkdseg.keys import KeyStore
from qkdseg.keys.shares import attack_shared, emulate_shared, relay_shared


def test_lost_and_altered_pieces_recovered_and_named():
    net = four_path_network()
    r = route(net, "s", "d", block_bits=128, sharing="threshold", tolerate=2)
    store = KeyStore(net)
    for lost, altered in [((), ()), ([(0, 1), (1, 3)], ()), ([(0, 0), (0, 2)], ()), ((), [(0, 3), (1, 0)]),
                          ([(1, 2)], [])]:
        run = relay_shared(r, store, 2, lost=lost, altered=altered)
        assert run.identical and run.destination_key == run.source_key
        for j, o in enumerate(run.segments):
            assert o.decoded and o.identical
            assert o.lost == tuple(sorted(i for jj, i in lost if jj == j))
            assert o.altered == tuple(sorted(i for jj, i in altered if jj == j))
    assert store.debited_bits == 5 * r.consumed_bits


def test_tolerate_one_detects_a_tampered_piece_and_xor_would_not_survive_a_loss():
    net = four_path_network()
    r = route(net, "s", "d", block_bits=64, sharing="threshold", tolerate=1)
    run = relay_shared(r, KeyStore(net), 1, altered=[(1, 2)])
    assert not run.identical and run.destination_key is None
    assert run.segments[0].identical and not run.segments[1].decoded
    assert "altered share detected, not located" in run.segments[1].error
    run = relay_shared(r, KeyStore(net), 1, lost=[(0, 0)])
    assert run.identical


def test_attack_needs_k_shares_of_one_segment():
    net = four_path_network()
    r = route(net, "s", "d", block_bits=64, sharing="threshold", tolerate=2)  # k = 2 of 4
    run = relay_shared(r, KeyStore(net), 2)
    relays = [[path[1] for path in seg.paths] for seg in r.segments]
    assert not attack_shared(run, [], r)
    assert not attack_shared(run, [relays[0][0], relays[1][1]], r)  # one share of each segment
    assert attack_shared(run, [relays[1][0], relays[1][3]], r)  # two shares of segment 2
    assert attack_shared(run, ["t"], r)  # the interior segment node relays G


def test_emulate_shared_secrecy_and_recovery():
    net = four_path_network(0.7)
    out = emulate_shared(net, "s", "d", tolerate=2, trials=150, block_bits=64, seed=3, lose=0, alter=1)
    assert out["keys_identical"] == out["altered_named"] == 150
    assert abs(out["empirical_secrecy"] - out["exact_security"]) <= 4 * out["standard_error"] + 1e-9
    assert out["exact_security"] == pytest.approx(route(net, "s", "d", sharing="threshold", tolerate=2).security)


def test_emulate_cli_threshold():
    res = CliRunner().invoke(app, ["emulate", "example", "--src", "0", "--dst", "7", "--sharing", "threshold",
                                   "--tolerate", "1", "--lose", "1", "--trials", "40", "-f", "json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["keys_identical"] == 40 and out["route"]["tolerate"] == 1
    res = CliRunner().invoke(app, ["emulate", "example", "--src", "0", "--dst", "7", "--tolerate", "1"])
    assert res.exit_code == 2 and "need --sharing threshold" in res.output
    res = CliRunner().invoke(app, ["emulate", "example", "--src", "0", "--dst", "7", "--sharing", "threshold",
                                   "--tolerate", "1", "--lose", "3"])
    assert res.exit_code == 2 and "exceeds the paths of segment 1" in res.output
