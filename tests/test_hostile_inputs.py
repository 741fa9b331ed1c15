"""Hostile and malformed inputs through the ``qkdseg`` command (issue 14).

Every case must give exit status 2, exactly one line on stderr starting
``qkdseg: error:`` (naming what is wrong: the case's needle), and no
traceback. The cases are data: adding one is one line in ``CASES``; files
they read are in ``FILES``.

All cases run in one subprocess (a fresh interpreter; one import instead of
one per case keeps this test at a few seconds): a driver calls the console
script's entry point, ``qkdseg.cli.main``, once per case with its own
``sys.argv``, captures what it writes to stdout and stderr and its exit
status, and reports any exception that escapes ``main`` as a traceback. A
few cases also run as their own ``python -m qkdseg`` process, end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NODES3 = [{"id": 0, "trusted": True}, {"id": 1, "p": 0.5}, {"id": 2, "trusted": True}]
LINKS3 = [{"source": 0, "target": 1}, {"source": 1, "target": 2}]


def net(nodes=NODES3, links=LINKS3, **top) -> str:
    return json.dumps({"nodes": nodes, "links": links, **top})


FILES = {
    "big_pool.json": net(links=[{"source": 0, "target": 1, "pool_bits": 1e40}, {"source": 1, "target": 2}]),
    "huge_int_pool.json": '{"nodes": [{"id": 0, "trusted": true}, {"id": 1, "trusted": true}], "links": [{"source": 0, "target": 1, "pool_bits": 1' + "0" * 400 + "}]}",
    "inf_pool.json": net(links=[{"source": 0, "target": 1, "pool_bits": 1e400}, {"source": 1, "target": 2}]).replace("Infinity", "1e400"),
    "nan_p.json": net(nodes=[{"id": 0, "trusted": True}, {"id": 1, "p": float("nan")}, {"id": 2, "trusted": True}]),
    "bool_p.json": net(nodes=[{"id": 0, "trusted": True}, {"id": 1, "p": True}, {"id": 2, "trusted": True}]),
    "string_p.json": net(nodes=[{"id": 0, "trusted": True}, {"id": 1, "p": "high"}, {"id": 2, "trusted": True}]),
    "p_above_one.json": net(nodes=[{"id": 0, "trusted": True}, {"id": 1, "p": 1.5}, {"id": 2, "trusted": True}]),
    "no_p.json": net(nodes=[{"id": 0, "trusted": True}, {"id": 1}, {"id": 2, "trusted": True}]),
    "directed.json": net(directed=True),
    "self_loop.json": net(links=[{"source": 1, "target": 1}]),
    "duplicate_link.json": net(links=LINKS3 + [{"source": 1, "target": 0}]),
    "duplicate_node.json": net(nodes=NODES3 + [{"id": 1, "p": 0.9}]),
    "undeclared.json": net(links=[{"source": 0, "target": 9}]),
    "list_id.json": net(nodes=[{"id": [1]}]),
    "null_id.json": net(nodes=[{"id": None}]),
    "negative_length.json": net(links=[{"source": 0, "target": 1, "length_km": -3}, {"source": 1, "target": 2}]),
    "nodes_not_list.json": '{"nodes": 5, "links": []}',
    "top_list.json": "[1, 2, 3]",
    "truncated.json": net()[:-7],
    "empty.json": "",
    "binary.json": "\x00\xff\xfe garbage",
    "bad.graphml": "<graphml><graph edgedefault='undirected'><node id='a'/>",
    "directed.graphml": (
        '<?xml version="1.0"?><graphml xmlns="http://graphml.graphdrawing.org/xmlns">'
        '<graph edgedefault="directed"><node id="a"/><node id="b"/><edge source="a" target="b"/></graph></graphml>'
    ),
    "bad.gml": "graph [ node [ id 0 ] edge [ source 0 target ",
    "unknown.txt": "whatever",
    "escape.json": net(
        nodes=[{"id": 0, "trusted": True}, {"id": "\x1b[31mevil\nid", "p": 0.5}, {"id": 2, "trusted": True}],
        links=[{"source": 0, "target": "\x1b[31mevil\nid"}, {"source": "\x1b[31mevil\nid", "target": 2}],
    ),
    "results_file": "not a directory",
}

HUGE = "99999999999999999999"
ABILENE = "topohub:topozoo/Abilene"

# (id, arguments, a part of the error line that names the fault)
CASES = [
    # -- values in files --------------------------------------------------------------------------
    ("pool 1e40 in a file", ["route", "big_pool.json", "--src", "0", "--dst", "2"], "pool_bits"),
    ("pool 10**400 in a file", ["route", "huge_int_pool.json", "--src", "0", "--dst", "1"], "pool_bits"),
    ("pool infinite in a file", ["route", "inf_pool.json", "--src", "0", "--dst", "2"], "pool_bits"),
    ("p NaN", ["route", "nan_p.json", "--src", "0", "--dst", "2"], "NaN"),
    ("p true", ["route", "bool_p.json", "--src", "0", "--dst", "2"], "'p'"),
    ("p a string", ["route", "string_p.json", "--src", "0", "--dst", "2"], "'p'"),
    ("p 1.5", ["route", "p_above_one.json", "--src", "0", "--dst", "2"], "outside [0, 1]"),
    ("p missing", ["route", "no_p.json", "--src", "0", "--dst", "2"], "missing field 'p'"),
    ("directed node-link", ["route", "directed.json", "--src", "0", "--dst", "2"], "directed"),
    ("directed graphml", ["topology", "show", "directed.graphml"], "directed"),
    ("self-loop", ["topology", "show", "self_loop.json"], "self-loop"),
    ("duplicate link", ["topology", "show", "duplicate_link.json"], "duplicate link"),
    ("duplicate node", ["topology", "show", "duplicate_node.json"], "duplicate id"),
    ("undeclared end", ["topology", "show", "undeclared.json"], "not declared"),
    ("list id", ["topology", "show", "list_id.json"], "not a scalar"),
    ("null id", ["topology", "show", "null_id.json"], "null_id.json"),
    ("negative length", ["topology", "show", "negative_length.json"], "length_km"),
    ("nodes not a list", ["topology", "show", "nodes_not_list.json"], "'nodes'"),
    ("top-level list", ["topology", "show", "top_list.json"], "node-link JSON object"),
    ("truncated JSON", ["topology", "show", "truncated.json"], "malformed JSON"),
    ("empty file", ["topology", "show", "empty.json"], "malformed JSON"),
    ("binary file", ["topology", "show", "binary.json"], "binary.json"),
    ("broken graphml", ["topology", "show", "bad.graphml"], "bad.graphml"),
    ("broken gml", ["topology", "show", "bad.gml"], "bad.gml"),
    ("unknown suffix", ["topology", "show", "unknown.txt"], "suffix"),
    ("missing file", ["topology", "show", "nope.json"], "no such file"),
    ("directory as NET", ["route", "a_dir.json", "--src", "0", "--dst", "1"], "is a directory"),
    # -- numbers on the command line ----------------------------------------------------------------
    ("max-paths huge", ["route", "example", "--src", "0", "--dst", "7", "--max-paths", HUGE], "--max-paths"),
    ("max-paths zero", ["route", "example", "--src", "0", "--dst", "7", "--max-paths", "0"], "--max-paths"),
    ("trials huge", ["emulate", "example", "--src", "0", "--dst", "7", "--trials", HUGE], "--trials "),
    ("trials zero", ["emulate", "example", "--src", "0", "--dst", "7", "--trials", "0"], "--trials "),
    ("generate seed -1", ["topology", "generate", "waxman", "--seed", "-1", "-o", "g.json"], "--seed"),
    ("demo seed -1", ["demo", "--seed", "-1"], "--seed"),
    ("route seed -1", ["route", "example", "--src", "0", "--dst", "7", "-a", "msp", "--seed", "-1"], "seed"),
    ("emulate seed -1", ["emulate", "example", "--src", "0", "--dst", "7", "--seed", "-1"], "--seed -1"),
    ("default-p 2", ["route", "example", "--src", "0", "--dst", "7", "--default-p", "2"], "--default-p"),
    ("default-p nan", ["topology", "show", "no_p.json", "--default-p", "nan"], "--default-p"),
    ("epsilon 1.5", ["route", "example", "--src", "0", "--dst", "7", "-e", "1.5"], "epsilon"),
    ("generate 1 node", ["topology", "generate", "waxman", "--nodes", "1", "-o", "g.json"], "nodes"),
    ("generate p 2", ["topology", "generate", "waxman", "--p", "2", "-o", "g.json"], "--p 2"),
    ("generate pool huge", ["topology", "generate", "waxman", "--pool-bits", HUGE, "-o", "g.json"], "--pool-bits"),
    ("generate too many trusted", ["topology", "generate", "waxman", "--trusted", "500", "-o", "g.json"], "trusted"),
    ("generate bad suffix", ["topology", "generate", "waxman", "-o", "g.txt"], "suffix"),
    ("generate unknown kind", ["topology", "generate", "erdos", "-o", "g.json"], "unknown generator"),
    ("generate alpha and mean degree", ["topology", "generate", "waxman", "--alpha", "0.2", "--mean-degree", "5", "-o", "g.json"], "not both"),
    ("reproduce trials huge", ["reproduce", "--trials", HUGE, "--out", "r", "--quiet"], "--trials"),
    ("reproduce workers huge", ["reproduce", "--trials", "1", "--workers", HUGE, "--out", "r", "--quiet"], "--workers"),
    ("study requests huge", ["study", "--requests", HUGE, "--out", "s", "--quiet"], "--requests"),
    ("demo requests 0", ["demo", "--requests", "0"], "--requests"),
    ("generate nodes huge", ["topology", "generate", "waxman", "--nodes", HUGE, "-o", "g.json"], "--nodes "),
    ("generate alpha nan", ["topology", "generate", "waxman", "--alpha", "nan", "-o", "g.json"], "alpha"),
    ("empty NET", ["route", "", "--src", "0", "--dst", "7"], "empty network name"),
    ("simulate rate x duration huge", ["simulate", "example", "--rate", "1", "--duration", HUGE, "--quiet", "--out", "sm"], "expected requests"),
    ("simulate ppbp rate huge", ["simulate", "example", "--arrivals", "ppbp", "--rate", HUGE, "--duration", "10", "--quiet", "--out", "sm"], "expected requests"),
    ("simulate key bits huge", ["simulate", "example", "--rate", "1", "--duration", "10", "--key-bits", HUGE, "--quiet", "--out", "sm"], "--key-bits"),
    ("simulate interval tiny", ["simulate", "example", "--rate", "1", "--duration", "10", "--interval", "1e-300", "--quiet", "--out", "sm"], "interval"),
    # -- topohub queries ----------------------------------------------------------------------------
    ("topohub seed -1", ["topology", "show", f"{ABILENE}?seed=-1"], "seed"),
    ("topohub pool 1e40", ["topology", "show", f"{ABILENE}?pool_bits=1" + "0" * 40], "pool_bits"),
    ("topohub repeated key", ["topology", "show", f"{ABILENE}?p=0.9&p=0.5"], "given twice"),
    ("topohub unknown key", ["topology", "show", f"{ABILENE}?colour=red"], "unknown parameter"),
    ("topohub p nan", ["topology", "show", f"{ABILENE}?p=nan"], "p="),
    ("topohub trusted inf", ["topology", "show", f"{ABILENE}?trusted=inf"], "trusted"),
    ("topohub no such", ["topology", "show", "topohub:topozoo/Atlantis"], "no such topology"),
    # -- nodes -------------------------------------------------------------------------------------
    ("unknown node", ["route", "example", "--src", "0", "--dst", "99"], "'99'"),
    ("same node", ["route", "example", "--src", "3", "--dst", "3"], "same node"),
    ("escape sequence in an error", ["route", "escape.json", "--src", "0", "--dst", "\x1b[2J\nboom"], "\\x1b"),
    # -- output locations --------------------------------------------------------------------------
    ("reproduce out is a file", ["reproduce", "--trials", "1", "--out", "results_file", "--quiet"], "not a directory"),
    ("study out is a file", ["study", "--out", "results_file", "--quiet"], "not a directory"),
    ("plot out is a file", ["plot", "results_file"], "results_file"),
    ("plot without results", ["plot", "a_dir.json"], "no results"),
    ("route plot bad suffix", ["route", "example", "--src", "0", "--dst", "7", "--plot", "x.bmp"], "--plot"),
    ("generate out is a directory", ["topology", "generate", "waxman", "-o", "a_dir.json"], "directory"),
    # -- usage errors, one line too ----------------------------------------------------------------
    ("missing --dst", ["route", "example", "--src", "0"], "--dst"),
    ("format xml", ["route", "example", "--src", "0", "--dst", "7", "--format", "xml"], "xml"),
    ("epsilon abc", ["route", "example", "--src", "0", "--dst", "7", "--epsilon", "abc"], "--epsilon"),
    ("unknown reconstruction", ["route", "example", "--src", "0", "--dst", "7", "-e", "0.5", "-r", "magic"], "magic"),
    ("nodes abc", ["topology", "generate", "waxman", "--nodes", "abc", "-o", "g.json"], "--nodes"),
    ("unknown option", ["route", "example", "--src", "0", "--dst", "7", "--colour", "red"], "--colour"),
    ("unknown command", ["fly"], "fly"),
    ("unknown topology command", ["topology", "draw"], "draw"),
    ("kms unknown option", ["kms", "--bogus"], "--bogus"),
    ("unknown algorithm", ["route", "example", "--src", "0", "--dst", "7", "-a", "teleport"], "teleport"),
    ("reconstruction without epsilon", ["route", "example", "--src", "0", "--dst", "7", "-r", "paper"], "--epsilon"),
]


def _run(tmp: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QKDSEG_")}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "qkdseg", *args], cwd=tmp, capture_output=True, text=True, timeout=120, env=env,
        errors="replace",
    )


DRIVER = r"""
import contextlib, io, json, sys, traceback
from qkdseg.cli import main

out = []
for args in json.load(sys.stdin):
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        sys.argv = ["qkdseg", *args]
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            stderr.write(traceback.format_exc())
            code = 1
    out.append({"returncode": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()})
json.dump(out, sys.__stdout__)
"""


def _tmp_with_files(tmp: Path) -> Path:
    for name, text in FILES.items():
        (tmp / name).write_text(text, encoding="utf-8")
    (tmp / "a_dir.json").mkdir()
    return tmp


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    tmp = _tmp_with_files(tmp_path_factory.mktemp("hostile"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("QKDSEG_")}
    env["COLUMNS"] = "200"
    res = subprocess.run(
        [sys.executable, "-c", DRIVER], input=json.dumps([c[1] for c in CASES]), cwd=tmp, capture_output=True,
        text=True, timeout=600, env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return {case[0]: subprocess.CompletedProcess(case[1], **r) for case, r in zip(CASES, json.loads(res.stdout))}


@pytest.mark.parametrize("case_id, args, needle", CASES, ids=[c[0] for c in CASES])
def test_one_line_exit_2(outcomes, case_id, args, needle):
    res = outcomes[case_id]
    lines = res.stderr.splitlines()
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    assert res.returncode == 2, (res.returncode, res.stderr, res.stdout[-300:])
    assert len(lines) == 1 and lines[0].startswith("qkdseg: error: "), res.stderr
    assert needle in lines[0], lines[0]
    assert "\x1b" not in res.stderr, "terminal escapes must be escaped"


#: Cases that also run as their own process (the real exit path, stdout and stderr).
END_TO_END = ["pool 1e40 in a file", "missing --dst", "escape sequence in an error"]


@pytest.mark.parametrize("case_id", END_TO_END)
def test_end_to_end(tmp_path, case_id):
    args, needle = next((c[1], c[2]) for c in CASES if c[0] == case_id)
    res = _run(_tmp_with_files(tmp_path), args)
    assert "Traceback" not in res.stderr and res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("qkdseg: error: ") and needle in res.stderr


def test_help_stays_rich():
    res = _run(Path.cwd(), ["route", "--help"])
    assert res.returncode == 0 and "--dst" in res.stdout and "Usage" in res.stdout and not res.stderr


def test_escaped_ids_in_text_output(tmp_path):
    (tmp_path / "escape.json").write_text(FILES["escape.json"], encoding="utf-8")
    res = _run(tmp_path, ["route", "escape.json", "--src", "0", "--dst", "2"])
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stdout and "\\x1b[31mevil\\nid" in res.stdout


def test_closed_pipe_is_quiet():
    """``qkdseg topology list | head -1``: no traceback, no 'Exception ignored'."""
    proc = subprocess.Popen([sys.executable, "-m", "qkdseg", "topology", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert first.strip() == b"example"
    assert err == "" and proc.returncode in (0, 1)


# -- the Python API: the project's own exceptions, never a raw TypeError/IndexError --------------------
def _api_cases():
    import numpy as np

    import qkdseg
    from qkdseg.topology import waxman_large

    net = qkdseg.example_network()
    p = np.array([1.0, 0.5, 0.5, 1.0])
    seg = [[[0, 1, 3], [0, 2, 3]]]
    return [
        ("route on a name", lambda: qkdseg.route("example", 0, 7)),
        ("route on None", lambda: qkdseg.route(None, 0, 7)),
        ("route max_paths 10**30", lambda: qkdseg.route(net, 0, 7, max_paths=10**30)),
        ("route bad reconstruction option", lambda: qkdseg.route(net, 0, 7, epsilon=0.5, reconstruction="optimal",
                                                                 reconstruction_options={"time_limit": "x"})),
        ("exdijkstra removed_nodes not a list", lambda: qkdseg.exdijkstra(net, 0, 7, removed_nodes=5)),
        ("waxman trusted 2.5", lambda: qkdseg.waxman(100, trusted=2.5)),
        ("waxman 100.5 nodes", lambda: qkdseg.waxman(100.5)),
        ("waxman seed -1", lambda: qkdseg.waxman(30, seed=-1)),
        ("waxman 10**6 nodes", lambda: qkdseg.waxman(10**6)),
        ("waxman_large p nan", lambda: waxman_large(1000, p=float("nan"))),
        ("exact p 1.5", lambda: qkdseg.exact_security(np.array([1.0, 1.5, 0.5, 1.0]), seg)),
        ("exact p nan", lambda: qkdseg.exact_security(np.array([1.0, np.nan, 0.5, 1.0]), seg)),
        ("exact negative index", lambda: qkdseg.exact_security(p, [[[0, -1, 3]]])),
        ("exact index out of range", lambda: qkdseg.exact_security(p, [[[0, 9, 3]]])),
        ("exact string index", lambda: qkdseg.exact_security(p, [[[0, "a", 3]]])),
        ("independent p 1.5", lambda: qkdseg.independent_security(np.array([1.0, 1.5, 0.5, 1.0]), seg)),
        ("independent index out of range", lambda: qkdseg.independent_security(p, [[[0, 9, 3]]])),
        ("montecarlo samples 1.5", lambda: qkdseg.montecarlo_security(p, seg, samples=1.5)),
        ("read_network of an int", lambda: qkdseg.read_network(123)),
        ("write_network of an int", lambda: qkdseg.write_network(5, "x.json")),
        ("load None", lambda: qkdseg.load(None)),
        ("Network of a string", lambda: qkdseg.Network("abc")),
        ("Network default_p True", lambda: qkdseg.Network(net.graph, default_p=True)),
    ]


API_CASES = _api_cases()


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_raises_project_errors(case):
    from qkdseg import QkdsegError

    with pytest.raises(QkdsegError):
        case[1]()
