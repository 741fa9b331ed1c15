"""``qkdseg place``: checked against an independent brute force, outputs,
determinism, one-line errors."""

from __future__ import annotations

import json

import networkx as nx
import pytest
from typer.testing import CliRunner

from placement_checker import brute_force, objective, with_trusted
from qkdseg import Network, read_network, write_network
from qkdseg.cli import app
from test_placement import random_graph

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_case(tmp_path, seed: int, n: int):
    g = random_graph(seed, n, (0.5, 0.8, 0.9), trusted=1)
    net_file = tmp_path / f"net{seed}.json"
    write_network(Network(g), net_file)
    pairs = [(a, b, 1.0 + (a + b) % 3) for a, b in [(0, n - 1), (1, n - 2), (2, n - 3), (0, n // 2), (1, n - 1)]]
    dem_file = tmp_path / f"demands{seed}.csv"
    dem_file.write_text("source,destination,weight\n" + "".join(f"{a},{b},{w}\n" for a, b, w in pairs))
    return g, net_file, dem_file, pairs


@pytest.mark.parametrize("seed,n,k", [(11, 8, 2), (12, 9, 3), (13, 12, 2)])
def test_place_command_against_its_own_brute_force(tmp_path, seed, n, k):
    """The command's exact optimum equals the checker's brute force over
    every placement; greedy and the baselines never exceed it; the nodes it
    prints give its value when the checker evaluates them."""
    g, net_file, dem_file, pairs = write_case(tmp_path, seed, n)
    best, _ = brute_force(g, k, pairs)
    res = run("place", net_file, "--budget", k, "--method", "exact", "--demands", dem_file, "--format", "json", "-q")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["value"] == pytest.approx(best, abs=1e-9)
    assert objective(with_trusted(g, out["nodes"]), pairs) == pytest.approx(out["value"], abs=1e-9)
    for m in ("greedy", "swap", "degree", "k-center"):
        res = run("place", net_file, "--budget", k, "--method", m, "--demands", dem_file, "--format", "json", "-q")
        r = json.loads(res.output)
        assert r["value"] <= best + 1e-9
        assert objective(with_trusted(g, r["nodes"]), pairs) == pytest.approx(r["value"], abs=1e-9)


def test_outputs_are_ready_for_route_and_byte_identical(tmp_path):
    _g, net_file, _d, _p = write_case(tmp_path, 14, 10)
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        res = run("place", net_file, "--budget", 2, "--demands", "sample:20", "--seed", 3, "--out", out, "-q")
        assert res.exit_code == 0, res.output
        outs.append(out)
        text = res.output
    for f in ("placement.json", "network.json"):
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes()
    doc = json.loads((outs[0] / "placement.json").read_text())
    placed = read_network(outs[0] / "network.json")
    for v in doc["nodes"]:
        assert placed.is_trusted(v) and placed.p(v) == 1.0
    assert len(placed.trusted_nodes) == 1 + len(doc["nodes"])
    assert f"{doc['value']:.6f}" in text
    res = run("route", outs[0] / "network.json", "--src", 0, "--dst", 9, "--format", "json")
    assert res.exit_code == 0


def test_curve_figure(tmp_path):
    out = tmp_path / "c"
    res = run("place", "example", "--budget", 1, "--out", out, "--curve", "0..3",
              "--curve-methods", "greedy,exact,degree", "-q", "--format", "json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["curve"]["k"] == [0, 1, 2, 3] and set(doc["curve"]["values"]) == {"greedy", "exact", "degree"}
    assert all(e >= g - 1e-12 for e, g in zip(doc["curve"]["values"]["exact"], doc["curve"]["values"]["greedy"]))
    assert (out / "curve.png").stat().st_size > 0 and (out / "curve.svg").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--budget", 99], "budget"),
        (["--budget", 1, "--demands", "sample:0"], "sample:N"),
        (["--budget", 1, "--demands", "missing.csv"], "missing.csv"),
        (["--budget", 1, "--method", "nope"], "--method"),
        (["--budget", 1, "--curve", "0..3"], "--curve needs --out"),
        (["--budget", 1, "--epsilon", 3], "epsilon"),
        (["--budget", 4, "--method", "exact", "--max-placements", 3], "--max-placements"),
    ],
)
def test_errors_are_one_line(args, needle):
    res = run("place", "example", *args)
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("qkdseg: error:") and needle in lines[0], res.output


def test_bad_curve_range(tmp_path):
    res = run("place", "example", "--budget", 1, "--out", tmp_path, "--curve", "5..2")
    assert res.exit_code == 2 and "--curve" in res.output
    assert not nx.utils.graphs_equal(nx.path_graph(2), nx.path_graph(3))


def test_study_unit_and_report(tmp_path):
    """One network of ``qkdseg study --placement`` (Abilene, small budgets):
    rows for every method, exact never below greedy, and the report's tables."""
    from qkdseg.experiments.placement import placement_table, study_unit, write_placement_report

    import pandas as pd

    opts = {"seed": 0, "p": 0.8, "objective": "security", "budgets": [1, 2], "methods": ("greedy", "swap", "degree", "random"),
            "baselines": ("degree", "random"), "swap_max_k": 2, "swap_passes": 1, "exact_budgets": (2,),
            "max_placements": 4000, "waxman_demands": "all", "zoo_demands": "sample:30"}
    rows = study_unit("topozoo/Abilene", ("zoo", "topozoo/Abilene"), 0, opts)
    df = pd.DataFrame(rows)
    assert set(df["method"]) == {"greedy", "swap", "degree", "random", "exact", "greedy@exact"}
    ex = df.set_index("method")
    assert ex.loc["exact", "value"] >= ex.loc["greedy@exact", "value"] - 1e-12
    t = placement_table(df)
    assert t["gap"] is not None and t["gains"] is not None
    text = write_placement_report(df, tmp_path).read_text()
    assert "Exact optimum minus greedy" in text and "topology-zoo" in text
