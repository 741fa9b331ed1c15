"""How long the suite's waits may take on this machine: every fixed bound of a test that waits on a process is
scaled by :func:`scaled` (issue 32: on a busy machine a child took longer than a fixed 90 s to start).

The factor is ``QKDSEG_TEST_SLOWDOWN`` when set (e.g. 3 on a machine known to be slow), else the machine's
one-minute load average per CPU at the moment of the call, at least 1 and at most 6.
"""

from __future__ import annotations

import os


def slowdown() -> float:
    """The factor for waits now (see the module)."""
    env = os.environ.get("QKDSEG_TEST_SLOWDOWN")
    if env:
        return max(1.0, float(env))
    try:
        load = os.getloadavg()[0]
    except OSError:
        return 1.0
    return max(1.0, min(6.0, load / (os.cpu_count() or 1)))


def scaled(seconds: float) -> float:
    """``seconds`` as a bound on this machine now: ``seconds`` times :func:`slowdown`."""
    return seconds * slowdown()
