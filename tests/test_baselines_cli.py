"""All four algorithms through one JSON contract, checked by the independent
checker (tests/reconstruction_checker.py) on random networks, and the
``route --epsilon/--reconstruction`` and ``algorithms`` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from reconstruction_checker import check_optimal_vs_paper, check_reconstruction, check_route, independent_security, load_network
from reconstruction_checker import exact_security as checker_exact
from qkdseg import route, waxman, write_network
from qkdseg.cli import app

runner = CliRunner()
ALGOS = ["smr", "msp", "disjoint", "single"]
SCHEMES = ["paper", "optimal", "reuse", "xor-all"]
BASE_KEYS = {"algorithm", "source", "destination", "segment_nodes", "segments", "security", "security_independent",
             "consumed_bits", "key_consumption_rate", "block_bits", "blocked", "options", "sharing", "tolerate"}


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


# Random networks: uniform p, and relaxed trusted relays (trusted_p < 1) so that
# paths share risky relays and the exact security differs from the textbook one.
CASES = [
    dict(n=40, trusted=5, p=0.8, trusted_p=1.0, seed=1),
    dict(n=50, trusted=8, p=0.7, trusted_p=0.95, seed=2),
    dict(n=30, trusted=4, p=0.9, trusted_p=1.0, seed=3),
    dict(n=60, trusted=10, p=0.6, trusted_p=0.9, seed=4),
    dict(n=35, trusted=6, p=0.85, trusted_p=0.97, seed=5),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"n{c['n']}-t{c['trusted']}-p{c['p']}-tp{c['trusted_p']}")
def test_independent_checker_on_random_networks(tmp_path, case):
    net = waxman(case["n"], trusted=case["trusted"], p=case["p"], trusted_p=case["trusted_p"], seed=case["seed"])
    path = tmp_path / "net.json"
    write_network(net, path)
    checked = load_network(path)
    rng = np.random.default_rng(case["seed"])
    for _ in range(6):
        s, d = (int(x) for x in rng.choice(case["n"], size=2, replace=False))
        for algo in ALGOS:
            opts = {"seed": int(rng.integers(1000))} if algo == "msp" else {}
            for eps in (0.5, 0.9):
                by_scheme = {}
                for scheme in SCHEMES:
                    r = route(net, s, d, algorithm=algo, epsilon=eps, reconstruction=scheme, **opts)
                    doc = json.loads(json.dumps(r.to_dict(), allow_nan=False))
                    assert BASE_KEYS <= set(doc)
                    check_route(checked, doc)
                    check_reconstruction(checked, doc, scheme, eps)
                    by_scheme[scheme] = doc
                check_optimal_vs_paper(by_scheme["optimal"], by_scheme["paper"])


def test_shared_relays_really_occur_in_the_random_cases():
    """The trusted_p < 1 cases must exercise exact != independent somewhere."""
    net = waxman(60, trusted=10, p=0.6, trusted_p=0.9, seed=4)
    gaps = [r.security_independent - r.security for r in (route(net, 0, d, algorithm="msp", seed=d) for d in range(1, 30))]
    assert max(gaps) > 1e-6 and min(gaps) >= -1e-12


@pytest.mark.parametrize("algo", ALGOS)
def test_cli_route_same_contract_for_all_algorithms(tmp_path, algo):
    net = tmp_path / "net.json"
    assert run("topology", "generate", "waxman", "--nodes", 40, "--trusted", 5, "--seed", 9, "-o", net).exit_code == 0
    res = run("route", net, "--src", 1, "--dst", 30, "--algorithm", algo, "--epsilon", 0.7, "--format", "json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert BASE_KEYS | {"reconstruction"} <= set(doc)
    assert ("security_claimed" in doc) == (algo == "msp")
    rec = doc["reconstruction"]
    assert rec["scheme"] == "paper" and rec["epsilon"] == 0.7
    assert {"scheme", "epsilon", "key_bits", "global_keys"} <= set(rec)
    checked = load_network(net)
    check_route(checked, doc)
    check_reconstruction(checked, doc, "paper", 0.7)
    # Without --epsilon the output is the foundation's contract, untouched.
    plain = json.loads(run("route", net, "--src", 1, "--dst", 30, "--algorithm", algo, "--format", "json").output)
    assert "reconstruction" not in plain
    assert set(plain) == BASE_KEYS | ({"security_claimed"} if algo == "msp" else set())


#: The example's route 0 -> 7 at epsilon 0.5, by hand. SMR: segments 0-3, 3-4, 4-7,
#: two one-relay paths (p = 0.8) each; 12 hops of B = 100 kb over 12 links of 100 kb.
#: paper/optimal: a key takes one piece per segment, 0.8^3 = 0.512 >= 0.5, 2 keys;
#: reuse: combinations {a}, {b}, {ab} = 0.96 per segment, three keys of 0.96 * 0.8 * 0.8
#: = 0.6144 by the balanced matching; xor-all: 0.96^3 = 0.884736, one key.
EXAMPLE_KEYS = {"paper": [0.512, 0.512], "optimal": [0.512, 0.512], "reuse": [0.6144] * 3, "xor-all": [0.884736]}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_cli_route_text_output_with_reconstruction(scheme):
    import re

    res = run("route", "example", "--src", 0, "--dst", 7, "-e", 0.5, "--reconstruction", scheme)
    assert res.exit_code == 0, res.output
    out = res.output
    keys = EXAMPLE_KEYS[scheme]
    n = len(keys)
    assert f"reconstruction {scheme} at epsilon=0.5" in out
    assert re.search(r"security \(exact\)\s+0\.884736\b", out)
    assert re.search(r"consumed bits\s+1200000\s+\(12 hops\)", out)
    assert re.search(r"key consumption rate\s+1\.000000\b", out)  # 1.2 Mb of 12 links x 100 kb
    secs = [float(x) for x in re.findall(r"│\s+\d+ │ (0\.\d{6}) │ 100000 │", out)]
    assert secs == pytest.approx(keys, abs=5e-7)
    assert re.search(rf"key length at eps\s+{n * 100_000} bits \({n} keys of 100000 bits\)", out)
    assert re.search(rf"consumed per key bit\s+{1_200_000 / (n * 100_000):.3f}\b", out)
    if scheme == "reuse":
        assert re.search(r"information-theoretic bound 200000 bits", out) and "computational" in out  # 2 pieces x B
    if scheme == "optimal":
        assert re.search(r"optimal\s+proven", out)


def test_cli_route_msp_text_shows_claimed():
    import re

    args = ("route", "example", "--src", 0, "--dst", 7, "-a", "msp", "--seed", 4, "--beta", 2, "--max-steps", 50)
    res = run(*args)
    assert res.exit_code == 0, res.output
    exact = float(re.search(r"security \(exact\)\s+([\d.]+)", res.output).group(1))
    claimed = float(re.search(r"security \(claimed\)\s+([\d.]+)", res.output).group(1))
    doc = json.loads(run(*args, "--format", "json").output)
    net = load_network_of_example()
    parts, chain = [seg["paths"] for seg in doc["segments"]], doc["segment_nodes"][1:-1]
    assert exact == pytest.approx(checker_exact(net, parts, chain), abs=5e-7)
    assert claimed == pytest.approx(independent_security(net, parts, chain), abs=5e-7)
    # two walks, each over three p = 0.8 relays and the two trusted ones: 1 - (1 - 0.512)^2
    assert exact == pytest.approx(1 - (1 - 0.512) ** 2, abs=5e-7)


def load_network_of_example():
    from reconstruction_checker import Net
    from qkdseg import example_network

    g = example_network().graph
    return Net({v: {"p": g.nodes[v]["p"], "trusted": g.nodes[v]["trusted"]} for v in g.nodes}, {frozenset(e) for e in g.edges})


def test_cli_no_key_and_blocked_text(tmp_path):
    res = run("route", "example", "--src", 0, "--dst", 7, "-e", 0.99)
    assert res.exit_code == 0 and "no key meets the level" in res.output and "no key delivered" in res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (("-r", "paper"), "needs --epsilon"),
        (("-e", 1.5), "epsilon"),
        (("-e", -0.1), "epsilon"),
        (("-a", "nope"), "unknown algorithm"),
        (("--seed", 3), "has no option 'seed'"),
        (("-a", "msp", "--beta", -1), "beta"),
    ],
)
def test_cli_route_errors_one_line_exit_2(args, message):
    res = run("route", "example", "--src", 0, "--dst", 7, *args)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output


def test_cli_bad_scheme_name_is_rejected():
    res = run("route", "example", "--src", 0, "--dst", 7, "-e", 0.5, "-r", "magic")
    assert res.exit_code == 2
    assert "magic" in res.output and "Traceback" not in res.output
    assert all(name in res.output for name in SCHEMES)  # the message names the valid schemes


def test_cli_algorithms_lists_everything():
    """The two tables, parsed: every algorithm and scheme by name (first column)
    and the documented defaults of their options (docs/reconstruction.md,
    docs/baselines.md)."""
    import re

    res = run("algorithms")
    assert res.exit_code == 0
    names = re.findall(r"^│ ([a-z][a-z-]*)\s+│", res.output, flags=re.M)
    assert set(ALGOS) <= set(names) and set(SCHEMES) <= set(names)
    flat = " ".join(res.output.replace("│", " ").split())
    for option, default in [("seed", "0"), ("beta", "1"), ("max_choices", "4096"), ("max_columns", "20000"),
                            ("time_limit", "10"), ("max_combinations", "1023")]:
        assert re.search(rf"{option}: .{{0,120}}?\(default {default}\)", flat), option
    assert re.search(r"max_steps: .{0,120}?\(default: unlimited, at most 2n\)", flat)
