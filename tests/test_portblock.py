"""tests/portblock.py: two runs of the suite at once never get the same ports; a killed run's block is free again."""

from __future__ import annotations

import fcntl
import signal
import subprocess
import sys
from pathlib import Path

import portblock

HOLD = ("import sys; sys.path.insert(0, sys.argv[1]); import portblock\n"
        "print(portblock.block_index(), portblock.port(), portblock.port_range(), flush=True); sys.stdin.read()")


def test_concurrent_runs_get_disjoint_blocks_and_a_killed_run_frees_its_own():
    here = str(Path(__file__).parent)
    runs = [subprocess.Popen([sys.executable, "-c", HOLD, here], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True) for _ in range(2)]
    try:
        got = [r.stdout.readline().split() for r in runs]
        mine = portblock.block_index()
        assert len({mine, *(int(g[0]) for g in got)}) == 3, (mine, got)  # this process, and each of the two
        for index, port, span in got:
            lo, hi = map(int, span.split("-"))
            first = portblock.LOW + int(index) * portblock.BLOCK
            assert first <= int(port) < lo <= hi < first + portblock.BLOCK <= portblock._top(), (index, port, span)
        lock = portblock.LOCKS / f"{portblock.LOW + int(got[0][0]) * portblock.BLOCK}.lock"
        with open(lock) as f:  # held by that run
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                raise AssertionError(f"{lock} was not held")
            except BlockingIOError:
                pass
            runs[0].send_signal(signal.SIGKILL)
            runs[0].wait(timeout=30)
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once that run is gone (kill -9 included)
    finally:
        for r in runs:
            r.kill()
            r.wait(timeout=30)
