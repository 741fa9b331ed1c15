import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))

# ``make test`` draws Hypothesis's examples from a fixed seed (the same examples on every run and machine, so CI
# does not fail by chance); ``HYPOTHESIS_PROFILE=explore`` draws fresh ones, and more, to look for new failures.
settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                          derandomize=True)
settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


import logging

import pytest


@pytest.fixture(autouse=True)
def _restore_logging():
    """A server run in-process (qkdseg.kms.logs.configure) sets handlers, levels and propagate on the package's and
    uvicorn's loggers; put them back after each test, so that caplog in a later test (of any order, any worker)
    still sees the package's records."""
    from qkdseg.server.logs import LOGGERS

    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate)
             for n in LOGGERS}
    yield
    for name, (handlers, level, propagate) in saved.items():
        log = logging.getLogger(name)
        log.handlers[:] = handlers
        log.setLevel(level)
        log.propagate = propagate
