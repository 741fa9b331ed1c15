"""Independent check of issue 26 (Done-when, second item).

Careless inputs and interrupts that issue 26 does not list, on route, emulate,
reproduce, study, simulate, place, plot and topology.  Written from the README,
docs/*.md and ``--help`` only (not from src/ or the other tests).

Every case runs ``qkdseg`` as a subprocess in its own temporary directory with a
timeout and asserts: exit code 2 (130 for interrupts), exactly one line on
stderr and it starts with ``qkdseg: error:``, no ``Traceback`` in stdout or
stderr, and the directory tree is unchanged (no new folder or partial file; a
pre-existing ``prev/`` output folder keeps its files byte for byte).

The careless cases run concurrently in a small thread pool (module fixture) to
keep the module's wall time bounded; each test then checks its own result.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

QKDSEG = [sys.executable, "-m", "qkdseg"]
TIMEOUT = 30
EX = ["example", "--src", "0", "--dst", "7"]
SIM = ["simulate", "example", "--duration", "10", "--algorithms", "smr", "-q"]

# (id, argv after 'qkdseg'); paths are relative to the case's own tmp dir,
# which holds: netdir/ (a directory), empty.json, binary.json, net.txt,
# afile (a plain file, so 'afile/x' cannot be created even by root),
# prev/ (an earlier output folder with a marker file), bad.csv (results
# with missing columns), empty.csv, garbage.parquet, demands_bad.csv.
CASES: list[tuple[str, list[str]]] = [
    # route
    ("route-dir-as-net", ["route", "netdir", "--src", "0", "--dst", "1"]),
    ("route-empty-json", ["route", "empty.json", "--src", "0", "--dst", "1"]),
    ("route-binary-json", ["route", "binary.json", "--src", "0", "--dst", "1"]),
    ("route-txt-extension", ["route", "net.txt", "--src", "0", "--dst", "1"]),
    ("route-missing-file", ["route", "nosuch.json", "--src", "0", "--dst", "1"]),
    ("route-unknown-dst", ["route", "example", "--src", "0", "--dst", "99"]),
    ("route-algo-near-miss", ["route", *EX, "--algorithm", "smrr"]),
    ("route-algo-near-miss-2", ["route", *EX, "--algorithm", "disjiont"]),
    ("route-epsilon-1.5", ["route", *EX, "--epsilon", "1.5"]),
    ("route-epsilon-nan", ["route", *EX, "--epsilon", "nan"]),
    ("route-epsilon-neg", ["route", *EX, "--epsilon", "-0.1"]),
    ("route-max-paths-0", ["route", *EX, "--max-paths", "0"]),
    ("route-block-bits-neg", ["route", *EX, "--block-bits", "-8"]),
    ("route-format-yaml", ["route", *EX, "--format", "yaml"]),
    ("route-metric-bogus", ["route", *EX, "--metric", "miles"]),
    ("route-reconstruction-no-eps", ["route", *EX, "-r", "optimal"]),
    ("route-plot-under-file", ["route", *EX, "--plot", "afile/route.png"]),
    ("route-plot-bad-ext", ["route", *EX, "--plot", "route.bmp"]),
    ("route-default-p-2", ["route", *EX, "--default-p", "2"]),
    ("route-topohub-unknown", ["route", "topohub:zoo/NoSuchNet", "--src", "0", "--dst", "1"]),
    ("route-topohub-bad-query", ["route", "topohub:zoo/Abilene?trusted=x", "--src", "0", "--dst", "1"]),
    # emulate
    ("emulate-trials-0", ["emulate", *EX, "--trials", "0"]),
    ("emulate-trials-neg", ["emulate", *EX, "--trials", "-3"]),
    ("emulate-trials-1e3", ["emulate", *EX, "--trials", "1e3"]),
    ("emulate-trials-huge", ["emulate", *EX, "--trials", str(2**70)]),
    ("emulate-block-bits-7", ["emulate", *EX, "--block-bits", "7"]),
    ("emulate-block-bits-0", ["emulate", *EX, "--block-bits", "0"]),
    ("emulate-seed-neg", ["emulate", *EX, "--seed", "-1"]),
    ("emulate-src-eq-dst", ["emulate", "example", "--src", "3", "--dst", "3"]),
    ("emulate-epsilon-inf", ["emulate", *EX, "--epsilon", "inf"]),
    # reproduce (existing prev/ must stay intact)
    ("reproduce-trials-0", ["reproduce", "--trials", "0", "--out", "prev", "-q"]),
    ("reproduce-trials-neg", ["reproduce", "--trials", "-3", "--out", "newout", "-q"]),
    ("reproduce-out-is-file", ["reproduce", "--trials", "2", "--out", "afile", "-q"]),
    ("reproduce-out-under-file", ["reproduce", "--trials", "2", "--out", "afile/sub", "-q"]),
    ("reproduce-out-empty", ["reproduce", "--trials", "2", "--out", "", "-q"]),
    ("reproduce-workers-0", ["reproduce", "--trials", "2", "--workers", "0", "--out", "newout", "-q"]),
    ("reproduce-backend-bogus", ["reproduce", "--trials", "2", "--backend", "threads", "--out", "newout"]),
    ("reproduce-sens-neg", ["reproduce", "--trials", "2", "--sensitivity-trials", "-1", "--out", "newout", "-q"]),
    # study
    ("study-topologies-bogus", ["study", "--topologies", "zooo", "--out", "newout", "-q"]),
    ("study-requests-0", ["study", "--requests", "0", "--out", "newout", "-q"]),
    ("study-trusted-neg", ["study", "--trusted", "-1", "--out", "newout", "-q"]),
    ("study-p-1.5", ["study", "--p", "1.5", "--out", "prev", "-q"]),
    ("study-min-nodes-huge", ["study", "--min-nodes", "100000", "--out", "newout", "-q"]),
    ("study-out-under-file", ["study", "--out", "afile/x", "--requests", "2", "-q"]),
    ("study-placement-budgets-empty-item", ["study", "--placement", "--no-zoo", "--waxman-seeds", "1", "--budgets", "2,,3", "--demands", "sample:20", "--exact-budgets", "2", "--out", "newout", "-q"]),
    ("study-placement-demands-sample-0", ["study", "--placement", "--no-zoo", "--waxman-seeds", "1", "--demands", "sample:0", "--out", "newout", "-q"]),
    ("study-placement-waxman-seeds-neg", ["study", "--placement", "--no-zoo", "--waxman-seeds", "-2", "--out", "newout", "-q"]),
    # simulate
    ("simulate-rates-empty-item", [*SIM, "--rates", "1,,2", "--out", "newout"]),
    ("simulate-rates-0", [*SIM, "--rates", "0", "--out", "newout"]),
    ("simulate-rates-x", [*SIM, "--rates", "x", "--out", "newout"]),
    ("simulate-rate-neg", [*SIM, "--rate", "-1", "--out", "newout"]),
    ("simulate-rate-and-rates", [*SIM, "--rate", "1", "--rates", "1,2", "--out", "newout"]),
    ("simulate-duration-0", [*SIM, "--rate", "1", "--duration", "0", "--out", "newout"]),
    ("simulate-duration-nan", [*SIM, "--rate", "1", "--duration", "nan", "--out", "newout"]),
    ("simulate-algo-near-miss", ["simulate", "example", "--rate", "1", "--duration", "10", "--algorithms", "smr,mps", "--out", "newout", "-q"]),
    ("simulate-pairs-bogus", [*SIM, "--rate", "1", "--pairs", "gravty", "--out", "newout"]),
    ("simulate-arrivals-bogus", [*SIM, "--rate", "1", "--arrivals", "pareto", "--out", "newout"]),
    ("simulate-trace-missing", [*SIM, "--trace", "nosuch.csv", "--out", "newout"]),
    ("simulate-trace-empty", [*SIM, "--trace", "empty.csv", "--out", "newout"]),
    ("simulate-trace-bad-cols", [*SIM, "--trace", "bad.csv", "--out", "newout"]),
    ("simulate-key-bits-0", [*SIM, "--rate", "1", "--key-bits", "0", "--out", "newout"]),
    ("simulate-epsilon-1.5", [*SIM, "--rate", "1", "--epsilon", "1.5", "--out", "newout"]),
    ("simulate-replications-0", [*SIM, "--rates", "1,2", "--replications", "0", "--out", "newout"]),
    ("simulate-interval-neg", [*SIM, "--rate", "1", "--interval", "-5", "--out", "newout"]),
    ("simulate-out-is-file", [*SIM, "--rate", "1", "--out", "afile"]),
    ("simulate-out-under-file", [*SIM, "--rate", "1", "--out", "afile/sim"]),
    ("simulate-prev-bad-seed", [*SIM, "--rate", "1", "--seed", "-1", "--out", "prev"]),
    # place
    ("place-budget-neg", ["place", "example", "--budget", "-1", "-q"]),
    ("place-budget-huge", ["place", "example", "--budget", "100", "-q"]),
    ("place-method-near-miss", ["place", "example", "--budget", "2", "--method", "gredy", "-q"]),
    ("place-objective-bogus", ["place", "example", "--budget", "2", "--objective", "mean", "-q"]),
    ("place-demands-sample-neg", ["place", "example", "--budget", "2", "--demands", "sample:-1", "-q"]),
    ("place-demands-sample-x", ["place", "example", "--budget", "2", "--demands", "sample:x", "-q"]),
    ("place-demands-unknown-node", ["place", "example", "--budget", "2", "--demands", "demands_bad.csv", "-q"]),
    ("place-demands-missing-file", ["place", "example", "--budget", "2", "--demands", "nodemands.csv", "-q"]),
    ("place-keys-epsilon-1.5", ["place", "example", "--budget", "2", "--objective", "keys", "--epsilon", "1.5", "-q"]),
    ("place-curve-reversed", ["place", "example", "--budget", "2", "--curve", "5..2", "--out", "newout", "-q"]),
    ("place-curve-garbage", ["place", "example", "--budget", "2", "--curve", "a..b", "--out", "newout", "-q"]),
    ("place-curve-no-out", ["place", "example", "--budget", "2", "--curve", "0..3", "-q"]),
    ("place-curve-methods-bogus", ["place", "example", "--budget", "2", "--curve", "0..2", "--curve-methods", "greedy,foo", "--out", "prev", "-q"]),
    ("place-exact-max-placements-0", ["place", "example", "--budget", "2", "--method", "exact", "--max-placements", "0", "-q"]),
    ("place-out-under-file", ["place", "example", "--budget", "2", "--out", "afile/pl", "-q"]),
    ("place-lazy-bogus", ["place", "example", "--budget", "2", "--lazy", "lazy", "-q"]),
    # plot
    ("plot-missing-columns", ["plot", "bad.csv", "--out", "newout"]),
    ("plot-empty-csv", ["plot", "empty.csv", "--out", "newout"]),
    ("plot-garbage-parquet", ["plot", "garbage.parquet", "--out", "newout"]),
    ("plot-missing-path", ["plot", "nosuch.parquet", "--out", "newout"]),
    ("plot-dir-without-results", ["plot", "netdir", "--out", "newout"]),
    ("plot-into-prev-bad-input", ["plot", "bad.csv", "--out", "prev"]),
    # topology
    ("topology-nodes-1", ["topology", "generate", "waxman", "--nodes", "1", "--out", "t.json"]),
    ("topology-nodes-0", ["topology", "generate", "waxman", "--nodes", "0", "--out", "t.json"]),
    ("topology-p-2", ["topology", "generate", "waxman", "--p", "2", "--out", "t.json"]),
    ("topology-trusted-gt-nodes", ["topology", "generate", "waxman", "--nodes", "10", "--trusted", "200", "--out", "t.json"]),
    ("topology-pool-bits-neg", ["topology", "generate", "waxman", "--pool-bits", "-5", "--out", "t.json"]),
    ("topology-kind-near-miss", ["topology", "generate", "waxmann", "--out", "t.json"]),
    ("topology-out-yaml", ["topology", "generate", "waxman", "--nodes", "20", "--out", "t.yaml"]),
    ("topology-out-is-dir", ["topology", "generate", "waxman", "--nodes", "20", "--out", "netdir"]),
    ("topology-out-under-file", ["topology", "generate", "waxman", "--nodes", "20", "--out", "afile/t.json"]),
    ("topology-out-empty", ["topology", "generate", "waxman", "--nodes", "20", "--out", ""]),
    ("topology-beta-neg", ["topology", "generate", "waxman", "--nodes", "20", "--beta", "-1", "--out", "t.json"]),
    ("topology-mean-degree-0", ["topology", "generate", "waxman", "--nodes", "300", "--mean-degree", "0", "--out", "t.json"]),
    ("topology-show-binary", ["topology", "show", "binary.json"]),
    ("topology-show-format-yaml", ["topology", "show", "example", "--format", "yaml"]),
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1] / "src"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _populate(d: Path) -> None:
    (d / "netdir").mkdir()
    (d / "netdir" / "readme.txt").write_text("not a network\n")
    (d / "empty.json").write_bytes(b"")
    (d / "binary.json").write_bytes(bytes(range(256)) * 8)
    (d / "net.txt").write_text("0 1\n1 2\n")
    (d / "afile").write_text("I am a file\n")
    (d / "prev").mkdir()
    (d / "prev" / "marker.txt").write_text("earlier output\n")
    (d / "prev" / "report.md").write_text("# earlier report\n")
    (d / "bad.csv").write_text("foo,bar\n1,2\n3,4\n")
    (d / "empty.csv").write_text("")
    (d / "garbage.parquet").write_bytes(b"PAR1" + os.urandom(200))
    (d / "demands_bad.csv").write_text("0,7\n0,42\n")


def _snapshot(d: Path) -> dict[str, str]:
    out = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        if p.is_dir():
            out[rel + "/"] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _run_case(base: Path, cid: str, argv: list[str]) -> dict:
    d = base / cid
    d.mkdir()
    _populate(d)
    before = _snapshot(d)
    t0 = time.monotonic()
    try:
        cp = subprocess.run(
            [*QKDSEG, *argv], cwd=d, env=_env(), capture_output=True, text=True,
            timeout=TIMEOUT, stdin=subprocess.DEVNULL,
        )
        rc, so, se = cp.returncode, cp.stdout, cp.stderr
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        so = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        se = (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    after = _snapshot(d)
    return dict(rc=rc, stdout=so, stderr=se, before=before, after=after,
                wall=time.monotonic() - t0)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    base = tmp_path_factory.mktemp("careless")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futs = {cid: pool.submit(_run_case, base, cid, argv) for cid, argv in CASES}
        return {cid: f.result() for cid, f in futs.items()}


def _diff(before: dict, after: dict) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"added={added} removed={removed} changed={changed}"


def _check_one_line_error(rc, stdout, stderr, expect_rc):
    assert rc == expect_rc, f"rc={rc!r} stdout={stdout[-800:]!r} stderr={stderr[-1500:]!r}"
    assert "Traceback" not in stdout + stderr, f"traceback: {stderr[-1500:]!r}"
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"stderr has {len(lines)} lines: {stderr[-1500:]!r}"
    assert lines[0].startswith("qkdseg: error:"), f"stderr: {lines[0]!r}"


@pytest.mark.parametrize("cid,argv", CASES, ids=[c for c, _ in CASES])
def test_careless_input(results, cid, argv):
    r = results[cid]
    _check_one_line_error(r["rc"], r["stdout"], r["stderr"], 2)
    assert r["before"] == r["after"], "files changed: " + _diff(r["before"], r["after"])


# ---------------------------------------------------------------- interrupts

INTERRUPTS = [
    # (id, argv, seconds before SIGINT, folder that must stay as it was)
    ("sigint-study-placement", ["study", "--placement", "--no-zoo", "--waxman-seeds", "20",
                                "--out", "prev"], 3.0),
    ("sigint-reproduce-20000", ["reproduce", "--trials", "20000", "--out", "prev"], 3.0),
    ("sigint-emulate-1e6", ["emulate", *EX, "--trials", str(10**6)], 3.0),
    ("sigint-simulate-sweep", ["simulate", "example", "--rates", "5,10,20,40", "--duration", "3600",
                               "--out", "prev"], 3.0),
]


@pytest.mark.parametrize("cid,argv,delay", INTERRUPTS, ids=[c for c, *_ in INTERRUPTS])
def test_interrupt(tmp_path, cid, argv, delay):
    _populate(tmp_path)
    before = _snapshot(tmp_path)
    p = subprocess.Popen([*QKDSEG, *argv], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    time.sleep(delay)
    finished_early = p.poll() is not None
    if not finished_early:
        os.killpg(p.pid, signal.SIGINT)  # as Ctrl-C: the whole foreground group
    try:
        so, se = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        so, se = p.communicate()
        pytest.fail(f"did not stop within 30 s of SIGINT; stderr={se[-1500:]!r}")
    finally:
        # reap any stray worker of the group
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if finished_early:
        pytest.skip(f"finished before SIGINT (rc={p.returncode}); make it longer")
    # progress bars go to stderr; only the error lines count
    err_lines = [ln for ln in se.splitlines() if ln.strip()]
    assert p.returncode == 130, f"rc={p.returncode} stderr={se[-1500:]!r}"
    assert "Traceback" not in so + se, f"traceback: {se[-2000:]!r}"
    errs = [ln for ln in err_lines if "qkdseg: error:" in ln]
    assert len(errs) == 1, f"{len(errs)} error lines: {se[-1500:]!r}"
    # the last non-empty line is the error (progress-bar frames may precede it
    # on the same carriage-returned line)
    assert err_lines[-1].split("\r")[-1].startswith("qkdseg: error:"), f"last line: {err_lines[-1][-300:]!r}"
    after = _snapshot(tmp_path)
    assert before == after, "files changed: " + _diff(before, after)
