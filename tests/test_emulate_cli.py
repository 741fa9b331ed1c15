"""`qkdseg emulate`: the JSON contract, conservation of bits, reproducibility, errors."""

import json

import pytest
from typer.testing import CliRunner

from checkers import brute_security
from qkdseg import route
from qkdseg.cli import app
from qkdseg.topology import load

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_emulate_json_contract_on_the_example():
    res = run("emulate", "example", "--src", 0, "--dst", 7, "--trials", 400, "--seed", 1, "--format", "json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    for key in ("trials", "keys_identical", "empirical_secrecy", "ci95", "exact_security", "bits_consumed", "route", "seed", "compromised"):
        assert key in out
    net = load("example")
    r = route(net, 0, 7, block_bits=256)
    assert out["route"] == json.loads(json.dumps(r.to_dict())) and out["route"]["block_bits"] == 256
    assert out["trials"] == out["keys_identical"] == 400
    assert out["bits_consumed"] == 400 * r.consumed_bits
    assert out["exact_security"] == pytest.approx(brute_security(net.graph, out["route"]))
    lo, hi = out["ci95"]
    assert lo <= out["empirical_secrecy"] <= hi
    assert abs(out["empirical_secrecy"] - out["exact_security"]) <= 4 * out["standard_error"]
    assert len(out["compromised"]) == 400 and "global_keys" not in out


def test_emulate_json_is_reproducible_for_a_seed():
    args = ("emulate", "example", "--src", 0, "--dst", 7, "--trials", 200, "--seed", 4, "-e", 0.5, "-r", "optimal", "-f", "json")
    a, b = run(*args), run(*args)
    assert a.exit_code == 0, a.output
    assert a.output == b.output
    out = json.loads(a.output)
    assert out["reconstruction"] == "optimal" and out["epsilon"] == 0.5
    assert out["route"]["reconstruction"]["scheme"] == "optimal"
    assert [k["exact_security"] for k in out["global_keys"]] == [k["security"] for k in out["route"]["reconstruction"]["global_keys"]]
    assert all(k["keys_identical"] == 200 for k in out["global_keys"])


@pytest.mark.parametrize("algorithm", ["smr", "msp", "disjoint", "single"])
def test_emulate_every_algorithm_on_waxman(tmp_path, algorithm):
    net_file = tmp_path / "w.json"
    assert run("topology", "generate", "waxman", "--trusted", 12, "--p", 0.7, "--trusted-p", 0.9, "--seed", 5, "-o", net_file).exit_code == 0
    res = run("emulate", net_file, "--src", 2, "--dst", 77, "-a", algorithm, "--trials", 150, "--seed", 3, "-f", "json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["keys_identical"] == 150
    assert out["bits_consumed"] == 150 * out["route"]["consumed_bits"]
    assert out["exact_security"] == out["route"]["security"]


def test_emulate_text_output():
    res = run("emulate", "example", "--src", 0, "--dst", 7, "--trials", 50, "-e", 0.5, "-r", "reuse")
    assert res.exit_code == 0, res.output
    assert "keys identical       50 / 50" in res.output and "computational keys" in res.output
    assert "masked" not in res.output


@pytest.mark.parametrize(
    "args, msg",
    [
        (("--block-bits", 100), "block_bits=100 must be a positive multiple of 8"),
        (("--trials", 0), "trials=0 must be a positive integer"),
        (("-r", "paper"), "--reconstruction needs --epsilon"),
        (("-a", "nope"), "unknown algorithm 'nope'"),
        (("--seed", -1), "seed=-1 must be a non-negative integer"),
    ],
)
def test_emulate_user_errors_are_one_line(args, msg):
    res = run("emulate", "example", "--src", 0, "--dst", 7, *args)
    assert res.exit_code == 2
    assert msg in res.output and "Traceback" not in res.output


def test_emulate_blocked_request(tmp_path):
    f = tmp_path / "two.json"
    f.write_text(json.dumps({"directed": False, "multigraph": False, "graph": {}, "nodes": [{"id": 0, "p": 1.0}, {"id": 1, "p": 1.0}, {"id": 2, "p": 0.5}], "links": [{"source": 0, "target": 2}]}))
    res = run("emulate", f, "--src", 0, "--dst", 1, "--trials", 10, "-f", "json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["blocked"] and out["bits_consumed"] == 0 and out["empirical_secrecy"] == 0.0 and out["exact_security"] == 0.0
