"""``--exit-after-unready SECONDS``: a server whose store fails gets out of the way (docs/deploy.md, "Restarts").

:class:`Watchdog` runs on a server's event loop (``kms serve``, ``node
serve``, ``controller serve``). Once a second while a write step fails
(:class:`.storehealth.StoreHealth`) it tries a write that changes nothing a
request reads (its ``probes``): the store recovers by itself once space is
freed, and the audit file catches up. When the store has failed for
``exit_after`` seconds in a row it writes one line and stops the server,
which then exits with status 1, so that its supervisor (systemd's
``Restart=on-failure``) restarts it; a stop that has not finished
``GRACE_S`` seconds later ends the process with status 1 all the same.
``exit_after`` 0 never exits.

Only the store's health counts here: ``/readyz`` is also false for reasons a
restart does not cure (no key material on any link, a node's controller
unreachable), and those never stop a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading

from ..errors import InvalidRequest
from . import logs
from .storehealth import StoreHealth

DEFAULT_EXIT_AFTER_S = 30.0
#: The environment variable the three serve commands read for ``--exit-after-unready`` (``net up`` passes it on).
ENV = "QKDSEG_EXIT_AFTER_UNREADY_S"
#: Seconds a stop asked for by the watchdog may take before the process ends with status 1 anyway.
GRACE_S = 15.0


def check_exit_after(value: float) -> float:
    """``--exit-after-unready``'s value, or one line of error."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 86400):
        raise InvalidRequest(f"--exit-after-unready {value}: seconds between 0 (never exit) and 86400")
    return float(value)


class Watchdog:
    """Probe a failing store back to health; stop the server after ``exit_after`` seconds of failure."""

    def __init__(self, health: StoreHealth, exit_after: float = DEFAULT_EXIT_AFTER_S, probes=()) -> None:
        self.health = health
        self.exit_after = float(exit_after)
        self.probes = list(probes)  # coroutine functions, or plain functions, that write (and raise if they fail)
        self.period = min(1.0, self.exit_after / 4) if self.exit_after > 0 else 1.0
        #: Functions that ask the server's listeners to stop (the runner sets them); none: the process ends at once.
        self.stoppers: list = []
        self.exit_status = 0
        self.timer: threading.Timer | None = None  # the end of a stop that takes more than GRACE_S

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            if self.health.ok:
                continue
            for probe in self.probes:
                with contextlib.suppress(Exception):  # a failure is recorded in the health by the probe itself
                    out = probe()
                    if asyncio.iscoroutine(out):
                        await out
            if not self.health.ok and self.exit_after > 0 and self.health.unready_s() >= self.exit_after:
                self.give_up()
                return

    def give_up(self) -> None:
        """Write the one line, ask the server to stop, and make sure the process ends with status 1."""
        self.exit_status = 1
        logs.say(f"not ready for {self.health.unready_s():.3g} s: the store fails a write ({self.health.detail()}); "
                 f"exiting with status 1 (--exit-after-unready {self.exit_after:g}) so that the supervisor restarts "
                 "it", err=True)
        if not self.stoppers:
            os._exit(1)
        for stop in self.stoppers:
            with contextlib.suppress(Exception):
                stop()
        self.timer = threading.Timer(GRACE_S, os._exit, (1,))
        self.timer.daemon = True
        self.timer.start()


def stop_servers(*servers) -> None:
    """Ask uvicorn ``servers`` to stop (as a signal would, without one to re-raise at their exit)."""
    for server in servers:
        server.should_exit = True
