"""Micro-batching across requests: concurrent clients' images share one model forward.

Requests put their items on an asyncio queue; one worker takes everything already waiting (up to
``max_batch`` items), waits at most ``max_wait`` seconds for more while the batch is short, runs
the batch function in the model's single thread and hands each request its slice. Under load the
queue fills while a batch runs, so batches grow and throughput with them; alone, a request waits
at most ``max_wait``. The queue is bounded: beyond ``max_queue`` waiting items :class:`QueueFull`
is raised at once (the service answers 503), so a burst cannot grow memory without limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MicroBatcher", "QueueFull"]


class QueueFull(RuntimeError):
    """More items are waiting than the batcher accepts."""


@dataclass
class _Job:
    items: list[Any]
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Collects items from concurrent callers into batches for ``run_batch``.

    Args:
        run_batch: ``list of items → list of results`` (same length and order); runs in
            ``executor`` (one thread owns the model). An exception fails every request of the batch.
        executor: where ``run_batch`` runs.
        max_batch: items per call (a single larger request is still run whole).
        max_wait: seconds to wait for more items when the batch is short.
        max_queue: items allowed to wait; more raise :class:`QueueFull`.
        on_batch: called with ``(items, seconds)`` after each batch (metrics).
    """

    def __init__(
        self,
        run_batch: Callable[[list[Any]], Sequence[Any]],
        executor: Executor,
        max_batch: int = 64,
        max_wait: float = 0.005,
        max_queue: int = 1024,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("MicroBatcher: max_batch, max_queue >= 1 and max_wait >= 0")
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.waiting = 0  # items queued, not yet taken by the worker
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker on the running event loop."""
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        """Stop the worker; requests still waiting fail with ``RuntimeError``."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the service is shutting down"))

    # --- requests -----------------------------------------------------------------------------
    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """Queue ``items`` and wait for their results (in order)."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.submit before start()")
        items = list(items)
        if not items:
            return []
        if self.waiting + len(items) > self.max_queue:
            raise QueueFull(
                f"{self.waiting} items are waiting and the queue holds {self.max_queue}"
            )
        job = _Job(items, asyncio.get_running_loop().create_future())
        self.waiting += len(items)
        self._queue.put_nowait(job)
        return await job.future

    # --- the worker ---------------------------------------------------------------------------
    async def _collect(self) -> list[_Job]:
        assert self._queue is not None
        jobs = [await self._queue.get()]
        size = len(jobs[0].items)
        deadline = time.perf_counter() + self.max_wait
        while size < self.max_batch:
            if self._queue.empty():
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            else:
                job = self._queue.get_nowait()
            jobs.append(job)
            size += len(job.items)
        self.waiting -= size
        return [j for j in jobs if not j.future.done()]  # a cancelled request needs no work

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            if not jobs:
                continue
            items = [item for job in jobs for item in job.items]
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, items)
                if len(results) != len(items):
                    raise RuntimeError(f"batch returned {len(results)} results for {len(items)}")
            except Exception as exc:  # every request of the batch fails; the worker goes on
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(items), time.perf_counter() - start)
            at = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(list(results[at : at + len(job.items)]))
                at += len(job.items)
