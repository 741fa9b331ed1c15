"""Long commands never leave half-written output, and check every option first (issue 26).

Two kinds of test:

- a table of careless inputs (``CASES``): each must give exit status 2, one
  ``qkdseg: error:`` line naming the fault, no traceback, and leave the
  working directory exactly as it was (no output folder, no staging folder,
  no file). They run in one interpreter, as in ``test_hostile_inputs.py``.
- Ctrl-C: SIGINT sent to a running ``place`` and ``simulate`` (one run and a
  load sweep on a process pool) process: exit status 130, exactly one line
  besides the progress bar (``qkdseg: error: interrupted``), no traceback
  from the command or its workers, and the previous output left as it was.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ALL_TRUSTED = json.dumps({"nodes": [{"id": 0, "trusted": True}, {"id": 1, "trusted": True}],
                          "links": [{"source": 0, "target": 1}]})
SIM = ["simulate", "example", "--rate", "5", "--duration", "20", "--quiet"]

# (id, arguments, a part of the error line that names the fault)
CASES = [
    ("simulate ttl inf", [*SIM, "--ttl", "inf", "--out", "o"], "--ttl inf"),
    ("simulate ttl -1", [*SIM, "--ttl", "-1", "--out", "o"], "--ttl -1"),
    ("simulate ttl nan", [*SIM, "--ttl", "nan", "--out", "o"], "--ttl nan"),
    ("simulate duration 0", [*SIM, "--duration", "0", "--out", "o"], "--duration 0"),
    ("simulate epsilon 2", [*SIM, "--epsilon", "2", "--out", "o"], "--epsilon 2"),
    ("simulate rate -3", ["simulate", "example", "--rate", "-3", "--quiet", "--out", "o"], "--rate -3"),
    ("simulate algorithms twice", [*SIM, "--algorithms", "smr,smr", "--out", "o"], "smr given more than once"),
    ("simulate out empty", [*SIM, "--out", ""], "empty path"),
    ("simulate sweep out empty", ["simulate", "example", "--rates", "1,2", "--duration", "5", "-q", "--out", ""], "empty path"),
    ("place out empty", ["place", "example", "--budget", "1", "--out", ""], "empty path"),
    ("plot out empty", ["plot", "good", "--out", ""], "empty path"),
    ("reproduce out empty", ["reproduce", "--trials", "1", "--quiet", "--out", ""], "empty path"),
    ("study out empty", ["study", "--quiet", "--out", ""], "empty path"),
    ("kms init empty", ["kms", "init", "", "--network", "example", "--sae", "a=0", "--sae", "b=7"], "empty path"),
    ("generate out empty", ["topology", "generate", "waxman", "-o", ""], "empty path"),
    ("route plot empty", ["route", "example", "--src", "0", "--dst", "7", "--plot", ""], "empty path"),
    ("plot all-NaN security", ["plot", "nan", "--out", "o"], "all NaN"),
    ("plot empty results", ["plot", "empty", "--out", "o"], "no rows"),
    ("plot empty results, default out", ["plot", "empty"], "no rows"),
    ("study trusted nan", ["study", "--trusted", "nan", "--quiet", "--out", "o"], "--trusted nan"),
    ("study trusted 2.5", ["study", "--trusted", "2.5", "--quiet", "--out", "o"], "whole number"),
    ("study trusted -1", ["study", "--trusted", "-1", "--quiet", "--out", "o"], "--trusted -1"),
    ("study p 2", ["study", "--p", "2", "--quiet", "--out", "o"], "--p 2"),
    ("place curve beyond the candidates", ["place", "example", "--budget", "2", "--curve", "0..50", "--out", "o", "-q"], "--curve 0..50"),
    ("place budget beyond the candidates", ["place", "example", "--budget", "20", "--out", "o", "-q"], "untrusted nodes"),
    ("place nothing to harden", ["place", "alltrusted.json", "--budget", "1", "--out", "o", "-q"], "trusted already"),
    # -- errors that name what the user typed (item 2) -------------------------------------------------
    ("generate nodes -5", ["topology", "generate", "waxman", "--nodes", "-5", "-o", "g.json"], "--nodes -5: a network needs at least 2"),
    ("generate dense generator too big", ["topology", "generate", "waxman", "--nodes", "20000", "--alpha", "0.01", "-o", "g.json"],
     "--mean-degree"),
    ("study budgets a,b", ["study", "--placement", "--budgets", "a,b", "--out", "o"], "--budgets 'a,b': 'a' is not"),
    ("study exact budgets", ["study", "--placement", "--exact-budgets", "2,x", "--out", "o"], "--exact-budgets '2,x': 'x'"),
    # found by the independent check of issue 26: an empty item was dropped without a word
    ("study budgets empty item", ["study", "--placement", "--budgets", "2,,3", "--out", "o"], "--budgets '2,,3': an empty item"),
    ("simulate rates empty item", ["simulate", "example", "--rates", "1,,2", "--duration", "5", "-q", "--out", "o"],
     "--rates '1,,2': an empty item"),
    ("reproduce out below a file", ["reproduce", "--trials", "1", "--quiet", "--out", "afile/sub"], "not a directory"),
]

DRIVER = r"""
import contextlib, io, json, os, sys, traceback
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
    listing = sorted(str(p) for p in __import__("pathlib").Path(".").rglob("*"))
    out.append({"returncode": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(), "listing": listing})
json.dump(out, sys.__stdout__)
"""


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QKDSEG_")}
    env["COLUMNS"] = "200"
    return env


def _results(tmp: Path) -> None:
    """good/, nan/ and empty/ results folders (a few rows of the paper's sweep)."""
    from qkdseg.experiments import paper_spec, run_sweep

    df = run_sweep(paper_spec(trials=1, seed=0, algorithms=("smr", "msp")), backend="serial", progress=False)
    for name, rows in (("good", df), ("nan", df.assign(security=float("nan"))), ("empty", df.iloc[:0])):
        (tmp / name).mkdir()
        rows.to_parquet(tmp / name / "results.parquet", index=False)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("careful")
    _results(tmp)
    (tmp / "alltrusted.json").write_text(ALL_TRUSTED, encoding="utf-8")
    (tmp / "afile").write_text("a file, not a folder", encoding="utf-8")
    before = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))
    res = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps([c[1] for c in CASES]), cwd=tmp,
                         capture_output=True, text=True, timeout=600, env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    return before, {case[0]: r for case, r in zip(CASES, json.loads(res.stdout))}


@pytest.mark.parametrize("case_id, args, needle", CASES, ids=[c[0] for c in CASES])
def test_checked_before_any_output(outcomes, case_id, args, needle):
    before, results = outcomes
    res = results[case_id]
    lines = res["stderr"].splitlines()
    assert "Traceback" not in res["stderr"] + res["stdout"], res["stderr"]
    assert res["returncode"] == 2, (res["returncode"], res["stderr"], res["stdout"][-300:])
    assert len(lines) == 1 and lines[0].startswith("qkdseg: error: "), res["stderr"]
    assert needle in lines[0], lines[0]
    assert res["listing"] == before, "a failed command must leave no folder or file behind"


# -- staging: a run that succeeds replaces its own files and keeps the user's --------------------------
def _run(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qkdseg", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=_env())


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".qkdseg-partial-*"))


def test_success_moves_files_into_place_and_keeps_others(tmp_path):
    out = tmp_path / "deep" / "er"
    res = _run(tmp_path, *SIM, "--algorithms", "smr,single", "--out", str(out))
    assert res.returncode == 0, res.stderr
    first = (out / "report.md").read_text()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    (out / "report.md").write_text("stale", encoding="utf-8")
    res = _run(tmp_path, *SIM, "--algorithms", "smr,single", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert (out / "report.md").read_text() == first  # the same seed, the same report
    assert (out / "notes.txt").read_text() == "mine"
    assert _leftovers(tmp_path) == []
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("wrote ") and "run.json" in last and ".qkdseg-partial" not in last
    for name in ("requests.parquet", "levels.parquet", "report.md", "run.json"):
        assert str(out / name) in last


def test_generate_says_when_it_keeps_fewer_nodes(tmp_path):
    res = _run(tmp_path, "topology", "generate", "waxman", "--nodes", "201", "-o", "g.json")
    assert res.returncode == 0, res.stderr
    import qkdseg

    kept = qkdseg.read_network(tmp_path / "g.json").n_nodes
    assert (f"of the 201 asked" in res.stdout) == (kept != 201), res.stdout


# -- Ctrl-C --------------------------------------------------------------------------------------------
def _interrupt(cwd: Path, args: list[str], ready: str, timeout: float = 90) -> tuple[int, str]:
    """Run ``qkdseg ARGS``, send SIGINT to its process group (as a terminal's Ctrl-C does) once
    ``ready`` appears on its stderr (the progress bar: the work has started), return (status, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "qkdseg", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(), start_new_session=True)
    seen = bytearray()
    started = threading.Event()

    def read() -> None:
        while chunk := proc.stderr.read1(4096):
            seen.extend(chunk)
            if ready.encode() in seen:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        from timing import scaled

        assert started.wait(scaled(timeout)), f"never started: {bytes(seen)[-2000:]!r}"
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        proc.stdout.read()
        status = proc.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return status, bytes(seen).decode(errors="replace")


def _own_lines(stderr: str, bar: str) -> list[str]:
    """stderr without the progress bar (its redraws end with a carriage return, not a newline)."""
    return [line for line in re.split(r"[\r\n]", stderr) if line.strip() and bar not in line]


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    import qkdseg

    tmp = tmp_path_factory.mktemp("interrupt")
    qkdseg.write_network(qkdseg.waxman(150, seed=1), tmp / "w150.json")
    return tmp


def _previous(out: Path) -> dict[str, str]:
    out.mkdir()
    files = {"report.md": "previous report", "run.json": "{}", "placement.json": "{}", "mine.txt": "the user's"}
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
    return files


CTRL_C = [
    ("place", ["place", "w150.json", "--budget", "20", "--demands", "all"], "greedy"),
    ("simulate", ["simulate", "w150.json", "--rate", "50", "--duration", "3600", "--algorithms", "smr,msp"], "simulated s"),
    ("simulate sweep on 2 workers", ["simulate", "w150.json", "--rates", "40,50", "--duration", "3600",
                                     "--algorithms", "smr", "--workers", "2"], "simulate:"),
]


@pytest.mark.parametrize("name, args, bar", CTRL_C, ids=[c[0] for c in CTRL_C])
def test_ctrl_c_exits_130_with_one_line_and_the_previous_output(big, name, args, bar):
    out = big / f"out-{name.replace(' ', '-')}"
    files = _previous(out)
    status, stderr = _interrupt(big, [*args, "--out", out.name], bar)
    assert status == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "Error" not in stderr.replace("qkdseg: error:", ""), stderr[-3000:]
    assert _own_lines(stderr, bar) == ["qkdseg: error: interrupted"], stderr[-2000:]
    assert {p.name: p.read_text() for p in out.iterdir()} == files
    assert _leftovers(big) == []


@pytest.mark.parametrize("delay", [0.05, 0.25])
def test_ctrl_c_while_the_package_is_imported_gives_the_one_line(delay):
    """The console script catches Ctrl-C before qkdseg.cli has installed its handler (while numpy, networkx,
    pandas are imported)."""
    script = Path(sys.executable).parent / "qkdseg"
    if not script.exists():
        pytest.skip(f"no console script at {script}")
    # SIGINT at its default in the child: a pytest-xdist worker ignores SIGINT, and an ignored signal is inherited
    proc = subprocess.Popen([str(script), "route", "example", "--src", "0", "--dst", "7"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(), start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:  # finished before the signal (a fast machine): nothing to check
        pytest.skip("the command ended before the signal")
    assert proc.returncode == 130 and err.decode().strip() == "qkdseg: error: interrupted", err.decode()


def test_an_interrupt_raised_inside_a_c_callback_is_not_printed_and_is_raised_again():
    """llvmlite runs Python callbacks from C (ctypes), where the trace's KeyboardInterrupt cannot propagate and
    Python would print it as "Exception ignored"; the hook swallows it and arms the trace again."""
    import types

    from qkdseg.cli.errors import _Interrupts, _unraisable

    seen = []
    handler = _Interrupts()
    hook = _unraisable(handler, seen.append)
    other = types.SimpleNamespace(exc_type=ValueError, exc_value=ValueError("x"), exc_traceback=None, object=None)
    hook(other)
    assert seen == [other]  # anything else goes to the default hook
    ki = types.SimpleNamespace(exc_type=KeyboardInterrupt, exc_value=KeyboardInterrupt(), exc_traceback=None,
                               object=None)
    hook(ki)
    assert seen == [other, ki]  # not ours: Ctrl-C was not pressed
    handler.hit = True
    before = sys.gettrace()
    raised = False
    try:
        hook(ki)  # armed: the trace raises at the next line of Python code
        raised = None  # not reached
    except KeyboardInterrupt:
        raised = True
    finally:
        sys.settrace(before)
    assert raised is True and seen == [other, ki]


def test_kms_init_that_fails_midway_leaves_no_kms_toml_and_runs_again(tmp_path, monkeypatch):
    """kms.toml is written last and the PKI is renamed into place whole: a failure while the PKI is made leaves
    neither, and the same command then succeeds (before, it refused: 'kms.toml already exists')."""
    from typer.testing import CliRunner

    import qkdseg.server.pki as pki
    from qkdseg.cli import app

    real = pki.make_pki

    def full_disk(folder, *args, **kw):
        real(folder, *args, **kw)  # some files written, then the disk is full
        raise OSError(28, "No space left on device")

    d = tmp_path / "svc"
    args = ["kms", "init", str(d), "--network", "example", "--sae", "A=0", "--sae", "B=7"]
    monkeypatch.setattr(pki, "make_pki", full_disk)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "No space left on device" in r.output, r.output
    assert not (d / "kms.toml").exists() and not (d / "pki").exists()
    assert not [p.name for p in d.iterdir() if p.name.startswith(".pki")]
    monkeypatch.setattr(pki, "make_pki", real)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (d / "kms.toml").exists() and (d / "pki" / "ca.crt").exists() and (d / "pki" / "A.crt").exists()


def test_files_a_user_asks_for_respect_the_umask(tmp_path):
    """`route --plot` and `topology generate -o` (written atomically through a temporary file) get the mode any tool's
    output gets under the umask (0644 under 022, 0640 under 027), as `place --out` always did (issue 32)."""
    import os
    import stat
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).with_name("qkdseg"))
    for mask, want in ((0o022, 0o644), (0o027, 0o640)):
        net, plot = tmp_path / f"w{mask:o}.json", tmp_path / f"r{mask:o}.svg"
        for cmd in ([exe, "topology", "generate", "waxman", "--nodes", "10", "-o", str(net)],
                    [exe, "route", "example", "--src", "0", "--dst", "7", "--plot", str(plot)]):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, preexec_fn=lambda m=mask: os.umask(m))
            assert r.returncode == 0, r.stderr
        assert stat.S_IMODE(net.stat().st_mode) == want and stat.S_IMODE(plot.stat().st_mode) == want
