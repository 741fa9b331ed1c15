"""Group commit: the change sets of concurrent requests written in one transaction from one writer thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time

from .store import Batch, Store
from .storehealth import CommitFailed


class GroupCommit:
    """Commit the batches of concurrent requests together, in their order, from one writer thread.

    ``await commit(batch)`` returns once ``batch`` is durable. While one
    transaction is being written, the batches that arrive are merged into
    the next one. A transaction that fails (:class:`.storehealth.CommitFailed`:
    rolled back) fails the batches merged into it, and only those: each caller
    restores what it changed in memory (a caller makes nothing visible to
    other requests before its batch is committed, so the batches of one
    transaction never depend on each other's). ``failed`` is the last
    transaction's error until a transaction (or :meth:`probe`) works again.

    ``inline``: the transactions (and probes) run on the event loop's thread, not on the writer thread, for a store
    whose commits do not wait for the disk (``durability = "normal"``: SQLite's WAL with ``synchronous=NORMAL``,
    the audit file written, not synced, at each commit): such a commit takes a fraction of a millisecond, less than
    handing it to a thread and back (two wake-ups, the GIL passed twice), which dominates a request's latency on a
    busy machine. The batches of the requests that come while one is written still merge into the next.
    """

    def __init__(self, store: Store, *, inline: bool = False) -> None:
        self.store = store
        self.inline = inline
        self._pending: list[tuple[Batch, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="qkdseg-kms-writer")
        self.transactions = 0
        self.failed: BaseException | None = None
        #: Called with (seconds, change sets merged, the audit records committed) after each transaction (the metrics).
        self.on_commit = None

    async def commit(self, batch: Batch) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((batch, fut))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            work, self._pending = self._pending, []
            merged = Batch()
            for b, _ in work:
                merged.merge(b)
            try:
                t0 = time.perf_counter()
                if self.inline:
                    self.store.commit(merged)
                else:
                    await loop.run_in_executor(self._executor, self.store.commit, merged)
                self.transactions += 1
                if self.on_commit is not None:
                    with contextlib.suppress(Exception):
                        self.on_commit(time.perf_counter() - t0, len(work), merged.audit)
            except BaseException as err:  # rolled back: these batches' callers restore their memory
                self._failed(err)
                for _, fut in work:
                    if not fut.done():
                        fut.set_exception(err)
                if isinstance(err, asyncio.CancelledError):
                    raise
                continue
            self._worked()
            for _, fut in work:
                if not fut.done():
                    fut.set_result(None)

    def _failed(self, err: BaseException) -> None:
        self.failed = err
        health = getattr(self.store, "health", None)
        if health is not None and isinstance(err, CommitFailed):
            health.failed(err.step, err.cause or err)

    def _worked(self) -> None:
        self.failed = None
        health = getattr(self.store, "health", None)
        if health is not None:
            health.worked("transaction")

    async def probe(self) -> bool:
        """Try a write that changes nothing a request reads (:meth:`.store.Store.probe`) on the writer thread;
        True when it worked (the store writes again, and the audit file has caught up)."""
        probe = getattr(self.store, "probe", None)
        if probe is None:
            return self.failed is None
        try:
            if self.inline:
                probe()
            else:
                await asyncio.get_running_loop().run_in_executor(self._executor, probe)
        except CommitFailed as err:
            self._failed(err)
            return False
        self._worked()
        return getattr(self.store, "health", None) is None or self.store.health.ok

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.store.close()
