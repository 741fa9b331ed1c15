"""Mutation testing of the core modules with mutmut (``make mutate``).

Not a test module and not part of ``make test``: a script. For each group of
core modules it copies the project into a scratch folder, writes a mutmut
configuration that mutates only those modules and selects the group's test
files, runs ``mutmut run`` there, and collects the counts and the surviving
mutants (with their diffs) into one JSON file and a text summary::

    .venv/bin/python tests/mutate.py                      # every group, this checkout
    .venv/bin/python tests/mutate.py --groups routing,security --out out-mutate
    .venv/bin/python tests/mutate.py --root /tmp/old-checkout   # score an older tree

Every group runs with ``QKDSEG_KERNEL=python``: the mutated code is the
readable Python reference (mutmut cannot mutate the numba kernels), and the
tests that only compare the two kernels with each other (test_kernels.py,
test_astar.py) are left out, so a mutant is killed only by a test with an
independent expectation. mutmut runs, for each mutant, the selected tests
that execute the mutated function.

Score = killed (timeouts included) / (killed + survived + not covered).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Group -> (modules to mutate, relative to the repository root, as globs;
#: test files or node ids, those missing in the checkout are skipped).
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "routing": (
        ["src/qkdseg/routing/smr.py", "src/qkdseg/routing/paths.py", "src/qkdseg/routing/baselines.py",
         "src/qkdseg/routing/msp.py"],
        ["tests/test_routing.py", "tests/test_msp.py", "tests/test_smr_oracle.py"],
    ),
    "security": (
        ["src/qkdseg/security.py", "src/qkdseg/security/*"],
        ["tests/test_security.py", "tests/test_routing.py", "tests/test_security_oracle.py"],
    ),
    "reconstruction": (
        ["src/qkdseg/reconstruction.py", "src/qkdseg/reconstruction/*"],
        ["tests/test_reconstruction.py", "tests/test_paper_counts.py", "tests/test_epsilon_edge.py"],
    ),
    "pools": (
        ["src/qkdseg/keys/pools.py"],
        ["tests/test_keys_material_pools.py", "tests/test_keys_relay.py"],
    ),
    "trials": (
        ["src/qkdseg/experiments/trials.py"],
        ["tests/test_experiments.py::test_columns_and_shape", "tests/test_experiments.py::test_rows_reproduce_from_the_recorded_seed",
         "tests/test_experiments.py::test_same_algorithms_see_same_trial", "tests/test_experiments.py::test_p_independent_cache_changes_nothing",
         "tests/test_sweep_columns.py"],
    ),
}

STATES = ("killed", "timeout", "survived", "no tests", "suspicious", "skipped", "segfault")


def _existing(root: Path, items: list[str]) -> list[str]:
    return [t for t in items if (root / t.split("::")[0]).exists()]


def _write_config(work: Path, modules: list[str], tests: list[str]) -> None:
    def lst(xs):
        return "\n" + "\n".join(f"    {x}" for x in xs)

    (work / "setup.cfg").write_text(
        "[mutmut]\n"
        "source_paths = src\n"
        f"only_mutate ={lst(modules)}\n"
        f"pytest_add_cli_args ={lst(['-p', 'no:cacheprovider', '-p', 'no:randomly'])}\n"
        f"pytest_add_cli_args_test_selection ={lst(tests)}\n"
    )


def _results(mutmut: str, work: Path) -> dict[str, str]:
    out = subprocess.run([mutmut, "results", "--all", "true"], cwd=work, capture_output=True, text=True).stdout
    states = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+): (.+)$", line)
        if m:
            states[m.group(1)] = m.group(2).strip()
    return states


_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import find_mutant, get_diff_for_mutant
out = {}
for name in json.load(sys.stdin):
    out[name] = get_diff_for_mutant(name, path=find_mutant(name).path)
print(json.dumps(out))
"""


def _diffs(mutmut: str, work: Path, names: list[str]) -> dict[str, str]:
    """The diffs of ``names``, from one process (``mutmut show`` starts one per mutant)."""
    python = str(Path(mutmut).parent / "python")
    proc = subprocess.run([python, "-c", _DIFFS], cwd=work, input=json.dumps(names), capture_output=True, text=True)
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {name: subprocess.run([mutmut, "show", name], cwd=work, capture_output=True, text=True).stdout for name in names}


def run_group(name: str, root: Path, mutmut: str, max_children: int) -> dict:
    modules, tests = GROUPS[name]
    tests = _existing(root, tests)
    work = Path(tempfile.mkdtemp(prefix=f"qkdseg-mutate-{name}-"))
    try:
        for item in ("src", "tests", "pyproject.toml"):
            src = root / item
            if src.is_dir():
                shutil.copytree(src, work / item, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
            else:
                shutil.copy2(src, work / item)
        _write_config(work, modules, tests)
        env = dict(os.environ, QKDSEG_KERNEL="python", QKDSEG_TEST_KERNELS="python", HYPOTHESIS_PROFILE="ci")
        t0 = time.monotonic()
        proc = subprocess.run([mutmut, "run", "--max-children", str(max_children)], cwd=work, env=env,
                              capture_output=True, text=True)
        wall = time.monotonic() - t0
        states = _results(mutmut, work)
        counts = {s: sum(1 for v in states.values() if v == s) for s in STATES}
        alive = sorted(m for m, st in states.items() if st in ("survived", "no tests"))
        diffs = _diffs(mutmut, work, alive)
        survivors = {m: {"state": states[m], "diff": diffs.get(m, "")} for m in alive}
        killed = counts["killed"] + counts["timeout"]
        denom = killed + counts["survived"] + counts["no tests"]
        return {
            "group": name,
            "modules": modules,
            "tests": tests,
            "wall_s": round(wall, 1),
            "returncode": proc.returncode,
            "log_tail": proc.stdout[-2000:] + proc.stderr[-2000:],
            "counts": counts,
            "total": len(states),
            "score": round(killed / denom, 4) if denom else None,
            "survivors": survivors,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent.parent), help="checkout to mutate")
    ap.add_argument("--groups", default=",".join(GROUPS), help=f"comma-separated, of: {', '.join(GROUPS)}")
    ap.add_argument("--out", default="out-mutate", help="folder for mutate.json and summary.txt")
    ap.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--mutmut", default=str(Path(sys.executable).parent / "mutmut"))
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = []
    for name in args.groups.split(","):
        if name not in GROUPS:
            print(f"mutate: error: unknown group {name!r} (groups: {', '.join(GROUPS)})", file=sys.stderr)
            return 2
        res = run_group(name, root, args.mutmut, args.max_children)
        report.append(res)
        c = res["counts"]
        print(f"{name:15s} score {res['score']}  killed {c['killed']} timeout {c['timeout']} survived {c['survived']} "
              f"no-tests {c['no tests']} of {res['total']}  ({res['wall_s']} s)", flush=True)
    (out / "mutate.json").write_text(json.dumps({"root": str(root), "groups": report}, indent=1))
    lines = []
    for res in report:
        lines.append(f"## {res['group']}: score {res['score']} ({res['counts']})")
        for mutant, info in res["survivors"].items():
            lines.append(f"### {mutant} ({info['state']})")
            lines.append(info["diff"].rstrip())
        lines.append("")
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    tot = {s: sum(r["counts"][s] for r in report) for s in STATES}
    killed = tot["killed"] + tot["timeout"]
    denom = killed + tot["survived"] + tot["no tests"]
    print(f"{'all':15s} score {killed / denom if denom else float('nan'):.4f}  {tot}")
    print(f"survivors and their diffs: {out / 'summary.txt'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
