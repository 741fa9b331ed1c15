"""`qkdseg emulate`: the JSON contract, conservation of bits, reproducibility, errors."""

import json

import pytest
from typer.testing import CliRunner

from checkers import brute_security
from reconstruction_checker import exact_security as checker_exact, load_network
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
    assert all(k["keys_identical"] == 200 for k in out["global_keys"])
    # Each key's exact security, recomputed by the independent checker from its parts:
    # on the example every path has one relay of p = 0.8 and a key takes one path per
    # segment, so 0.8^3 = 0.512 (hand value); its empirical secrecy is within a binomial bound.
    net = load_network_of_example()
    segs = out["route"]["segments"]
    chain = out["route"]["segment_nodes"][1:-1]
    for emu, key in zip(out["global_keys"], out["route"]["reconstruction"]["global_keys"]):
        parts = [[segs[part["segment"]]["paths"][i] for i in part["paths"]] for part in key["parts"]]
        exact = checker_exact(net, parts, chain)
        assert exact == pytest.approx(0.512, abs=1e-12) and emu["exact_security"] == pytest.approx(exact, abs=1e-12)
        assert emu["secret_trials"] == round(emu["empirical_secrecy"] * 200)
        assert abs(emu["empirical_secrecy"] - exact) <= 4.5 * (exact * (1 - exact) / 200) ** 0.5


@pytest.mark.parametrize("algorithm", ["smr", "msp", "disjoint", "single"])
def test_emulate_every_algorithm_on_waxman(tmp_path, algorithm):
    net_file = tmp_path / "w.json"
    assert run("topology", "generate", "waxman", "--trusted", 12, "--p", 0.7, "--trusted-p", 0.9, "--seed", 5, "-o", net_file).exit_code == 0
    res = run("emulate", net_file, "--src", 2, "--dst", 77, "-a", algorithm, "--trials", 150, "--seed", 3, "-f", "json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["keys_identical"] == 150
    assert out["bits_consumed"] == 150 * out["route"]["consumed_bits"]
    # the exact value by the independent checker, and the relay engine's empirical
    # secrecy against it: |emp - exact| <= 4.5 standard errors (+ 1/trials for the grid)
    route_doc = out["route"]
    exact = checker_exact(load_network(net_file), [seg["paths"] for seg in route_doc["segments"]], route_doc["segment_nodes"][1:-1])
    assert out["exact_security"] == pytest.approx(exact, abs=1e-12)
    assert abs(out["empirical_secrecy"] - exact) <= 4.5 * (exact * (1 - exact) / 150) ** 0.5 + 1 / 150


def load_network_of_example():
    from reconstruction_checker import Net

    g = load("example").graph
    return Net({v: {"p": g.nodes[v]["p"], "trusted": g.nodes[v]["trusted"]} for v in g.nodes}, {frozenset(e) for e in g.edges})


def test_emulate_text_output():
    """The text report's numbers, parsed: 12 hops of B = 256 bits per trial,
    the xor-all security 0.96^3 = 0.884736, the Wilson interval of the secret
    count, and reuse's keys: each takes both pieces of one segment (0.96) and
    one piece (0.8) of the two others, 0.96 * 0.8 * 0.8 = 0.6144."""
    import re

    from test_security import wilson_by_hand

    res = run("emulate", "example", "--src", 0, "--dst", 7, "--trials", 50, "-e", 0.5, "-r", "reuse")
    assert res.exit_code == 0, res.output
    out = res.output
    assert "masked" not in out
    assert re.search(r"keys identical\s+50 / 50 trials", out)
    emp, lo, hi = (float(x) for x in re.search(r"empirical secrecy\s+([\d.]+)\s+\(95% CI ([\d.]+) \.\. ([\d.]+)", out).groups())
    k = round(emp * 50)
    assert (lo, hi) == pytest.approx(wilson_by_hand(k, 50), abs=6e-5)
    exact, se = (float(x) for x in re.search(r"exact security\s+([\d.]+)\s+\(standard error ([\d.]+)\)", out).groups())
    assert exact == pytest.approx(0.96**3, abs=6e-5) and se == pytest.approx((0.96**3 * (1 - 0.96**3) / 50) ** 0.5, abs=6e-5)  # of the exact value
    assert abs(emp - 0.96**3) <= 4.5 * (0.96**3 * (1 - 0.96**3) / 50) ** 0.5
    assert re.search(r"bits consumed\s+153600\s+\(3072 per trial\)", out)  # 50 * 12 * 256
    assert "3 computational keys" in out
    rows = re.findall(r"│\s+(\d+) │\s+([\d.]+) │\s+([\d.]+) │ ([\d.]+) \.\. ([\d.]+) │\s+(\d+) │", out)
    assert len(rows) == 3
    for _, ex, em, klo, khi, ident in rows:
        assert float(ex) == pytest.approx(0.6144, abs=6e-5) and int(ident) == 50
        assert (float(klo), float(khi)) == pytest.approx(wilson_by_hand(round(float(em) * 50), 50), abs=6e-5)


@pytest.mark.parametrize(
    "args, msg",
    [
        (("--block-bits", 100), "--block-bits 100 must be a positive multiple of 8"),
        (("--trials", 0), "--trials 0 must be a positive integer"),
        (("-r", "paper"), "--reconstruction needs --epsilon"),
        (("-a", "nope"), "unknown algorithm 'nope'"),
        (("--seed", -1), "--seed -1 must be a non-negative integer"),
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
