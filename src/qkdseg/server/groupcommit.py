"""Group commit: the change sets of concurrent requests written in one transaction from one writer thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time

from .store import Batch, Store


class GroupCommit:
    """Commit the batches of concurrent requests together, in their order, from one writer thread.

    ``await commit(batch)`` returns once ``batch`` is durable. While one
    transaction is being written, the batches that arrive are merged into
    the next one.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: list[tuple[Batch, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="qkdseg-kms-writer")
        self.transactions = 0
        self.failed: BaseException | None = None
        #: Called with (seconds, change sets merged, the audit records committed) after each transaction (the metrics).
        self.on_commit = None

    async def commit(self, batch: Batch) -> None:
        if self.failed is not None:
            raise self.failed
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
                await loop.run_in_executor(self._executor, self.store.commit, merged)
                self.transactions += 1
                if self.on_commit is not None:
                    with contextlib.suppress(Exception):
                        self.on_commit(time.perf_counter() - t0, len(work), merged.audit)
            except BaseException as err:  # the store is no longer in step with memory: refuse from now on
                self.failed = err
                for _, fut in work:
                    if not fut.done():
                        fut.set_exception(err)
                for _, fut in self._pending:
                    if not fut.done():
                        fut.set_exception(err)
                self._pending = []
                return
            for _, fut in work:
                if not fut.done():
                    fut.set_result(None)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.store.close()
