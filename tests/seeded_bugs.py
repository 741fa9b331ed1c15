"""Seeded bugs in the three areas issue 15 found weakly guarded, and in the
operator dashboard (issue 12), and whether the test suite catches each one
(a script, not part of ``make test``)::

    .venv/bin/python tests/seeded_bugs.py            # every bug
    .venv/bin/python tests/seeded_bugs.py S1 E2      # some

For each bug it copies the checkout (src, tests, pyproject.toml) into a
scratch folder, applies the bug (exact text replacements, each of which must
match once), and runs the tests of that area there with the copy first on
``sys.path``. A bug is *caught* when pytest fails. SMR bugs are written into
both kernels (the numba kernel and the Python reference) where both hold the
decision, so agreement between the kernels cannot hide them.

Not listed: swapping ``security`` and ``security_independent`` in a sweep
row. Every sweep has trusted relays with p = 1 and no untrusted relay in two
paths, so the two columns are equal on every row and the swap is an
equivalent mutant there (tests/test_sweep_columns.py checks both columns,
and that they are equal for smr, disjoint and single).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMR = "src/qkdseg/routing/smr.py"
KERNELS = "src/qkdseg/_kernels.py"
RESULT = "src/qkdseg/reconstruction/result.py"
TRIALS = "src/qkdseg/experiments/trials.py"
MONITOR = "src/qkdseg/server/monitor.py"
LEVELS = "src/qkdseg/keys/levels.py"
DASH = "src/qkdseg/server/dashboard.py"
SERVICE = "src/qkdseg/kms/service.py"
PLANNER = "src/qkdseg/server/planner.py"
TLS = "src/qkdseg/server/tls.py"
APP = "src/qkdseg/server/http.py"

SMR_TESTS = ["tests/test_smr_oracle.py", "tests/test_routing.py"]
EPS_TESTS = ["tests/test_epsilon_edge.py", "tests/test_reconstruction.py", "tests/test_paper_counts.py"]
SWEEP_TESTS = ["tests/test_sweep_columns.py"]
DASH_TESTS = ["tests/test_dashboard_monitor.py", "tests/test_dashboard_api.py", "tests/test_dashboard_browser.py"]

#: name -> (area, description, [(file, old, new)], tests)
BUGS = {
    "S1": ("SMR step 1", "segmenting kept when merely as good (>=, no margin), both kernels",
           [(SMR, "if segmented > direct + STRICT_MARGIN:", "if segmented >= direct:"),
            (KERNELS, "if segmented > direct + margin:", "if segmented >= direct:")], SMR_TESTS),
    "S2": ("SMR step 1", "candidate ties go to the largest node index, both kernels",
           [(SMR, "r = int(np.argmin(score))", "r = int(len(score) - 1 - np.argmin(score[::-1]))"),
            (KERNELS, "                if sc < best:\n                    best = sc\n                    r = v",
             "                if sc <= best:\n                    best = sc\n                    r = v")], SMR_TESTS),
    "S3": ("SMR step 1", "candidate chosen by dist(cur, r) only, both kernels",
           [(SMR, "score = np.where(cand, dist_c + dist_t, np.inf)", "score = np.where(cand, dist_c, np.inf)"),
            (KERNELS, "sc = dist_c[v] + dist_t[v]", "sc = dist_c[v]")], SMR_TESTS),
    "S4": ("SMR step 1", "'strictly better' by 1e-6 instead of 1e-12 (both kernels read the constant)",
           [(SMR, "STRICT_MARGIN = 1e-12", "STRICT_MARGIN = 1e-6")], SMR_TESTS),
    "S5": ("SMR step 1", "the test compares one path per segment instead of two, both kernels",
           [(SMR, "max_paths=2, removed_nodes=rn", "max_paths=1, removed_nodes=rn"),
            (KERNELS, "seg_nodes, 2, mark)", "seg_nodes, 1, mark)")], SMR_TESTS),
    "S6": ("SMR step 1", "the segmented side forgets the candidate's own p (Python reference; numba falls back to it)",
           [(SMR, "return exact_security(arrays.p, paths, segment_nodes[1:-1])", "return exact_security(arrays.p, paths)")],
           SMR_TESTS),
    "E1": ("level epsilon", "meets: strict comparison (security > epsilon - tolerance)",
           [(RESULT, "return security >= epsilon - TOLERANCE", "return security > epsilon - TOLERANCE")], EPS_TESTS),
    "E2": ("level epsilon", "meets: no tolerance (security >= epsilon)",
           [(RESULT, "return security >= epsilon - TOLERANCE", "return security >= epsilon")], EPS_TESTS),
    "E3": ("level epsilon", "meets: strict and no tolerance (security > epsilon)",
           [(RESULT, "return security >= epsilon - TOLERANCE", "return security > epsilon")], EPS_TESTS),
    "E4": ("level epsilon", "tolerance 1e-9 instead of 1e-12",
           [(RESULT, "TOLERANCE = 1e-12", "TOLERANCE = 1e-9")], EPS_TESTS),
    "C1": ("sweep columns", "segments and paths swapped",
           [(TRIALS, '"segments": len(r.segments),\n            "paths": sum(len(seg) for seg in r.index_paths),',
             '"segments": sum(len(seg) for seg in r.index_paths),\n            "paths": len(r.segments),')], SWEEP_TESTS),
    "C2": ("sweep columns", "key_bits_e50 and key_bits_e70 swapped",
           [(TRIALS, "for eps, b in zip(spec.epsilons, bits):", "for eps, b in zip(spec.epsilons, [bits[1], bits[0], *bits[2:]]):")],
           SWEEP_TESTS),
    "C3": ("sweep columns", "key_bits_e70 and key_bits_e90 swapped",
           [(TRIALS, "for eps, b in zip(spec.epsilons, bits):", "for eps, b in zip(spec.epsilons, [bits[0], bits[2], bits[1]]):")],
           SWEEP_TESTS),
    "C4": ("sweep columns", "hops counts one more per segment",
           [(TRIALS, '"hops": r.hops,', '"hops": r.hops + len(r.segments),')], SWEEP_TESTS),
    "C5": ("sweep columns", "paths counts the first segment's only",
           [(TRIALS, '"paths": sum(len(seg) for seg in r.index_paths),', '"paths": len(r.index_paths[0]) if r.index_paths else 0,')],
           SWEEP_TESTS),
    "D1": ("dashboard", "full key ids shown", [(MONITOR, "return str(key_id)[:ID_CHARS]", "return str(key_id)")],
           DASH_TESTS),
    "D2": ("dashboard", "WARNING and CHARGING swapped",
           [(LEVELS, "np.isin(previous, (EMPTY, CHARGING)), CHARGING, WARNING)",
             "np.isin(previous, (EMPTY, CHARGING)), WARNING, CHARGING)")], DASH_TESTS),
    "D3": ("dashboard", "the last minute keeps items a second too long",
           [(MONITOR, "while self._recent and self._recent[0][0] < cut:",
             "while self._recent and self._recent[0][0] < cut - 1:")], DASH_TESTS),
    "D4": ("dashboard", "the access token is never asked for",
           [(DASH, "        if token is None:\n            return True", "        return True")], DASH_TESTS),
    "D5": ("dashboard", "no route paths in issue events",
           [(SERVICE, "paths = [[[str(v) for v in p] for p in seg.paths] for seg in r.segments] if self.observers else None",
             "paths = None")], DASH_TESTS),
    "D6": ("dashboard", "achieved security is the best key's, not the worst's",
           [(MONITOR, '"achieved_security": min(secs) if secs else None', '"achieved_security": max(secs) if secs else None')],
           DASH_TESTS),
    "D7": ("dashboard", "a drained route's refusal loses its reason code",
           [(PLANNER, 'bits on every link now; nothing was debited", reason="no_key_material")',
             'bits on every link now; nothing was debited")')], DASH_TESTS),
    "D8": ("dashboard", "every host counts as loopback (no --dashboard-public, no token)",
           [(TLS, '    if host == "localhost":\n        return True', "    return True")],
           ["tests/test_kms_setup.py", "tests/test_dashboard_api.py"]),
    "D9": ("dashboard", "security headers on 200 answers only",
           [(DASH, 'if message["type"] == "http.response.start":',
             'if message["type"] == "http.response.start" and message["status"] == 200:')], DASH_TESTS),
    "D10": ("key service", "a stop waits for idle keep-alive TLS clients again",
            [(APP, "        if self.cycle is None or self.cycle.response_complete:\n            self.transport.abort()\n"
                   "        else:\n            super().shutdown()", "        super().shutdown()")],
            ["tests/test_kms_server.py", "tests/test_dashboard_api.py"]),
}


def run_bug(name: str) -> tuple[bool, float, str]:
    area, what, edits, tests = BUGS[name]
    work = Path(tempfile.mkdtemp(prefix=f"qkdseg-bug-{name}-"))
    try:
        for item in ("src", "tests", "pyproject.toml"):
            src = ROOT / item
            if src.is_dir():
                shutil.copytree(src, work / item, ignore=shutil.ignore_patterns("*.egg-info"))
            else:
                shutil.copy2(src, work / item)
        for file, old, new in edits:
            path = work / file
            text = path.read_text()
            if text.count(old) != 1:
                raise SystemExit(f"seeded_bugs: {name}: {old!r} occurs {text.count(old)} times in {file}")
            path.write_text(text.replace(old, new))
        env = dict(os.environ, PYTHONPATH=str(work / "src"))
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=work, env=env, capture_output=True, text=True)
        wall = time.monotonic() - t0
        failed = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAILED")]
        return proc.returncode != 0, wall, failed[0] if failed else proc.stdout.strip().splitlines()[-1]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str]) -> int:
    names = argv or list(BUGS)
    missed = []
    for name in names:
        caught, wall, first = run_bug(name)
        area, what, *_ = BUGS[name]
        print(f"{name} [{area}] {what}: {'CAUGHT' if caught else 'MISSED'} ({wall:.0f} s) {first}", flush=True)
        if not caught:
            missed.append(name)
    print(f"{len(names) - len(missed)} of {len(names)} seeded bugs caught" + (f"; missed: {', '.join(missed)}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
