"""What a failed write means, and whether a server's store is writing now (docs/kms.md, "Disks").

Every durable write of a server is one of three steps:

- ``transaction``: the SQLite transaction of a :class:`.store.Batch` (the
  key store: keys, links' offsets and levels, the audit records);
- ``audit_file``: the copy of committed audit records to ``audit.jsonl``,
  after the transaction;
- ``relay_db``: a node's relay store (``relay.sqlite3``: link offsets, relay
  messages, device key chunks).

A ``transaction`` or ``relay_db`` step that fails is rolled back: nothing of
it is stored, the caller restores what it changed in memory and answers
:class:`CommitFailed` (a JSON 503, reason ``store_failed``). An
``audit_file`` step that fails after its transaction committed does not
fail the request: the records wait in the database and the file catches up
at the next write that works. :class:`StoreHealth` remembers which steps
fail now (each clears at its next success), since when, and how often;
``/readyz``, ``/metrics`` and ``--exit-after-unready`` read it.
"""

from __future__ import annotations

import logging
import threading
import time

from .etsi import KmsError

logger = logging.getLogger("qkdseg.kms")

#: The write steps (the ``step`` label of ``qkdseg_store_write_failures_total``).
STEPS = ("transaction", "audit_file", "relay_db")
#: The steps whose failure fails a request (an ``audit_file`` failure does not).
REQUEST_STEPS = ("transaction", "relay_db")
#: What the caller of a request whose write failed is told (the same words for every such request).
UNAVAILABLE = ("key store unavailable: a write to this server's store failed (is its disk full?); nothing of this "
               "request was stored; try again later")


class CommitFailed(KmsError):
    """A write that did not commit (rolled back): nothing of it is stored. A JSON 503 ``store_failed``."""

    def __init__(self, step: str, cause: BaseException | None = None) -> None:
        super().__init__(503, UNAVAILABLE, reason="store_failed")
        self.step = step
        self.cause = cause


def store_unavailable() -> CommitFailed:
    """The refusal of a request that needs a write while the store fails (the words of :class:`CommitFailed`)."""
    return CommitFailed("transaction")


class StoreHealth:
    """Which write steps fail now (their last error), since when, and how many failures each step had.

    Told from the event loop's thread and from the store's writer thread (the audit file); a listener must
    be safe to call from either.
    """

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}
        self.failures = {step: 0 for step in STEPS}
        self.since: float | None = None  # time.monotonic() when the steps began to fail
        #: Called with ``(step, failed)`` at each failure (``failed`` True) and when a failing step works again.
        self.listeners: list = []
        self._lock = threading.Lock()

    def failed(self, step: str, err: BaseException) -> None:
        text = f"{type(err).__name__}: {err}"[:200]
        with self._lock:
            if not self.errors:
                self.since = time.monotonic()
            new = step not in self.errors
            self.errors[step] = text
            self.failures[step] += 1
        if new:
            logger.error("the store failed a write (%s): %s; %s", step, text,
                         "the records wait in the database until the file can be written" if step == "audit_file"
                         else "requests that need a write get 503 until a write works again")
        self._tell(step, True)

    def worked(self, step: str) -> None:
        with self._lock:
            if step not in self.errors:
                return
            del self.errors[step]
            if not self.errors:
                self.since = None
        logger.warning("the store writes again (%s)", step)
        self._tell(step, False)

    def _tell(self, step: str, failed: bool) -> None:
        for listener in list(self.listeners):
            try:
                listener(step, failed)
            except Exception:  # noqa: BLE001 -- a listener (metrics, a report) never breaks a write
                logger.exception("a listener of the store's health failed")

    @property
    def ok(self) -> bool:
        """No step fails now."""
        return not self.errors

    @property
    def writes_ok(self) -> bool:
        """No step that fails requests fails now (``audit_file`` may: committed results are still answered)."""
        return not any(step in self.errors for step in REQUEST_STEPS)

    def unready_s(self) -> float:
        """Seconds since the steps began to fail (0 while none fails)."""
        return 0.0 if self.since is None else time.monotonic() - self.since

    def detail(self) -> str:
        """One line: what fails, or ``writing``."""
        if not self.errors:
            return "writing"
        return "; ".join(f"{step} failing since {self.unready_s():.0f} s ({text})" for step, text in self.errors.items())


def store_check(store, committer) -> tuple[bool, str]:
    """``/readyz``'s ``store`` check: the store open and every write step working."""
    health = getattr(store, "health", None)
    if getattr(store, "db", True) is None:
        return False, "closed"
    if health is not None and not health.ok:
        return False, f"a write failed: {health.detail()}"
    if committer.failed is not None:
        return False, f"the last transaction failed ({type(committer.failed).__name__})"
    return True, "open; writing"
