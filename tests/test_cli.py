"""The command line: round trips, JSON contract, errors (one line, exit 2)."""

import json
import re
import subprocess
import sys

import networkx as nx
import pytest
from typer.testing import CliRunner

from checkers import brute_security, check_smr_invariants
from qkdseg.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def qkdseg_proc(*args):
    """The real console entry point in a subprocess (what users run)."""
    return subprocess.run([sys.executable, "-m", "qkdseg", *map(str, args)], capture_output=True, text=True)


def test_generate_show_route_round_trip(tmp_path):
    net = tmp_path / "net.json"
    res = run("topology", "generate", "waxman", "--nodes", 100, "--trusted", 10, "--p", 0.8, "--seed", 7, "-o", net)
    assert res.exit_code == 0, res.output
    assert "100 nodes" in res.output and "seed 7" in res.output
    res = run("topology", "show", net, "--format", "json")
    summary = json.loads(res.output)
    assert summary["nodes"] == 100 and summary["trusted"] == 10 and summary["connected"]
    res = run("route", net, "--src", 3, "--dst", 60, "--format", "json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    required = {"algorithm", "source", "destination", "segment_nodes", "segments", "security",
                "security_independent", "consumed_bits", "key_consumption_rate", "block_bits", "blocked"}
    assert required <= set(r)
    assert r["source"] == 3 and isinstance(r["segment_nodes"][0], int)
    data = json.loads(net.read_text())
    g = nx.node_link_graph(data, edges="links")
    check_smr_invariants(g, r)
    assert r["security"] == pytest.approx(brute_security(g, r), abs=1e-12)


def test_json_output_is_byte_identical(tmp_path):
    a = run("route", "example", "--src", 0, "--dst", 7, "--format", "json").output
    b = run("route", "example", "--src", 0, "--dst", 7, "--format", "json").output
    assert a == b and json.loads(a)["segment_nodes"] == [0, 3, 4, 7]


def test_string_ids_match(tmp_path):
    data = {"nodes": [{"id": "A", "p": 0.9}, {"id": "T", "trusted": True}, {"id": "B", "p": 0.9}, {"id": "x", "p": 0.5}],
            "links": [{"source": "A", "target": "x"}, {"source": "x", "target": "T"}, {"source": "T", "target": "B"}]}
    f = tmp_path / "s.json"
    f.write_text(json.dumps(data))
    r = json.loads(run("route", f, "--src", "A", "--dst", "B", "-f", "json").output)
    assert r["segments"][0]["paths"] == [["A", "x", "T", "B"]]


def test_text_output_and_plot(tmp_path):
    png = tmp_path / "route.png"
    res = run("route", "example", "--src", 0, "--dst", 7, "--plot", png)
    assert res.exit_code == 0, res.output
    assert "security (exact)" in res.output and "0.884736" in res.output and "0 → 3 → 4 → 7" in res.output
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_blocked_request_is_reported(tmp_path):
    f = tmp_path / "two.json"
    f.write_text(json.dumps({"nodes": [{"id": 1, "p": 0.5}, {"id": 2, "p": 0.5}], "links": []}))
    res = run("route", f, "--src", 1, "--dst", 2)
    assert res.exit_code == 0 and "BLOCKED" in res.output
    r = json.loads(run("route", f, "--src", 1, "--dst", 2, "-f", "json").output)
    assert r["blocked"] is True and r["security"] == 0


@pytest.mark.parametrize(
    "args, needle",
    [
        (["route", "example", "--src", 0, "--dst", 99], "node '99' is not in network"),
        (["route", "example", "--src", 3, "--dst", 3], "same node"),
        (["route", "missing.json", "--src", 0, "--dst", 1], "missing.json: no such file"),
        (["route", "example", "--src", 0, "--dst", 7, "-a", "nope"], "unknown algorithm 'nope'"),
        (["route", "example", "--src", 0, "--dst", 7, "--max-paths", 0], "--max-paths 0"),
        (["topology", "generate", "waxman", "--p", 1.5, "-o", "x.json"], "--p 1.5 is outside [0, 1]"),
        (["topology", "generate", "torus", "-o", "x.json"], "unknown generator 'torus'"),
        (["topology", "show", "topohub:nowhere/none"], "no such topology"),
    ],
)
def test_user_errors_one_line_exit_2(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    res = run(*args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("qkdseg: error:") and needle in lines[0], res.output


def test_malformed_file_and_bad_p_in_subprocess(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    proc = qkdseg_proc("route", bad, "--src", 0, "--dst", 1)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("qkdseg: error:") and "bad.json" in proc.stderr
    badp = tmp_path / "badp.json"
    badp.write_text(json.dumps({"nodes": [{"id": 0, "p": 0.5}, {"id": 1, "p": 7}], "links": [{"source": 0, "target": 1}]}))
    proc = qkdseg_proc("route", badp, "--src", 0, "--dst", 1)
    assert proc.returncode == 2 and "node 1: p=7.0 is outside [0, 1]" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_list_and_algorithms():
    res = run("topology", "list")
    assert res.exit_code == 0
    lines = res.output.splitlines()
    assert lines[0] == "example" and "topohub:topozoo/Abilene" in lines
    names = lines[1:]
    assert len(names) > 100 and len(set(names)) == len(names) and all(n.startswith("topohub:") for n in names)
    # --group keeps exactly the names of that group, in the same order
    sndlib = run("topology", "list", "--group", "sndlib").output.splitlines()
    assert "topohub:sndlib/polska" in sndlib
    assert [n for n in sndlib if n.startswith("topohub:")] == [n for n in names if n.startswith("topohub:sndlib/")]
    out = run("algorithms").output
    listed = re.findall(r"^│ ([a-z][a-z-]*)\s+│", out, flags=re.M)
    assert {"smr", "disjoint", "single", "msp"} <= set(listed)


def test_topohub_route():
    """A real topology: the route equals the independent SMR oracle's, and its
    security the brute force."""
    from checkers import SMRChecker
    from qkdseg.topology import load

    spec = "topohub:topozoo/Abilene?trusted=3&seed=1"
    res = run("route", spec, "--src", 0, "--dst", 10, "-f", "json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["source"] == 0 and r["destination"] == 10
    g = nx.Graph(load(spec).graph)
    check_smr_invariants(g, r)
    nodes, paths = SMRChecker(g, 0, 10).route()
    assert r["segment_nodes"] == nodes and [seg["paths"] for seg in r["segments"]] == paths
    assert r["security"] == pytest.approx(brute_security(g, r), abs=1e-12)


def test_demo_runs_small():
    """The demo table, parsed. The example's rows by hand (two one-relay paths of
    p = 0.8 per segment for SMR; disjoint: two five-relay paths crossing the two
    trusted relays, 1 - (1 - 0.8^3)^2; single: one such path, 0.8^3, 6 hops), and
    the Waxman rows' columns tied together."""
    from qkdseg import waxman

    res = run("demo", "--requests", 5)
    assert res.exit_code == 0, res.output
    assert "waxman n=100 trusted=10 p=0.8 seed=7, 5 random pairs" in " ".join(res.output.split())
    rows = {}
    for line in res.output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 11 and cells[0] in ("example", "waxman-100"):
            rows[(cells[0], cells[1])] = [float(c.replace(",", "")) for c in cells[2:]]
    # requests, security, sec. indep., segments, paths, hops, consumed bits, consumption rate, blocked
    hand = {
        "smr": [1, 0.96**3, 0.96**3, 3, 6, 12, 1_200_000, 1.0, 0],
        "disjoint": [1, 1 - (1 - 0.512) ** 2, 1 - (1 - 0.512) ** 2, 1, 2, 12, 1_200_000, 1.0, 0],
        "single": [1, 0.512, 0.512, 1, 1, 6, 600_000, 0.5, 0],
    }
    for alg, vals in hand.items():
        assert rows[("example", alg)] == pytest.approx(vals, abs=5e-5), alg
    links = waxman(100, trusted=10, p=0.8, seed=7).n_links
    for alg in ("smr", "disjoint", "single", "msp"):
        req, sec, ind, segs, paths, hops, consumed, rate, blocked = rows[("waxman-100", alg)]
        assert req == 5 and blocked == 0 and 0 < sec <= 1
        assert consumed == pytest.approx(hops * 100_000, abs=0.5) and rate == pytest.approx(consumed / (links * 100_000), abs=5e-5)
        assert paths >= segs >= 1 and hops >= paths
        if alg != "msp":
            assert ind == pytest.approx(sec, abs=1e-4)  # no shared relay: the formula is exact
    assert rows[("waxman-100", "single")][4] == 1 and rows[("waxman-100", "disjoint")][3] == 1
