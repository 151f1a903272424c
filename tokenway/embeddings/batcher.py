"""Dynamic batching: the texts of concurrent requests, encoded together in one model call.

A model call has a fixed cost (Python, the runtime's dispatch) and a small matrix product runs at a
fraction of the speed of a large one, so many short texts encode faster together than one by one.
Requests queue their items; a collector takes the oldest first and gives later arrivals a bounded
wait (``max_wait_s``, a few ms, cut short once ``max_batch`` items are queued) to join it, then
hands up to ``max_batch`` items to the encoder on a worker thread. While a batch encodes, the next
one gathers, so under load batches fill without waiting at all. A request of more items than
``max_batch`` is split across batches; its vectors come back in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from tokenway.embeddings.schema import Item

# Items in, (vectors one row each, token counts one each) out. Blocking: runs on a worker thread.
Encode = Callable[[list[Item]], tuple[np.ndarray, list[int]]]
Result = tuple[np.ndarray, list[int]]


@dataclass(slots=True)
class _Job:
    items: list[Item]
    future: asyncio.Future[Result]
    arrived: float


@dataclass(slots=True)
class BatchStats:
    """What the batcher did: model calls by their number of items (for the benchmark and the docs)."""

    sizes: Counter[int] = field(default_factory=Counter)

    @property
    def calls(self) -> int:
        return sum(self.sizes.values())

    @property
    def items(self) -> int:
        return sum(size * count for size, count in self.sizes.items())


class DynamicBatcher:
    """Batches ``encode`` calls across concurrent callers. ``start()`` on the event loop that calls
    ``encode``; ``aclose()`` when done. ``workers`` batches may encode at once (one thread each)."""

    def __init__(self, encode: Encode, max_batch: int = 64, max_wait_s: float = 0.002, workers: int = 1) -> None:
        self._encode = encode
        self._max_batch = max_batch
        self._max_wait = max_wait_s
        self._pending: deque[_Job] = deque()
        self._queued = 0  # items in _pending
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._slots = asyncio.Semaphore(workers)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tokenway-embed")
        self._collector: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self.stats = BatchStats()

    def start(self) -> None:
        self._collector = asyncio.get_running_loop().create_task(self._collect())

    async def encode(self, items: Sequence[Item]) -> Result:
        """The vectors of ``items`` (in order) and each one's token count."""
        loop = asyncio.get_running_loop()
        futures = []
        for start in range(0, len(items), self._max_batch):
            job = _Job(list(items[start:start + self._max_batch]), loop.create_future(), loop.time())
            self._pending.append(job)
            self._queued += len(job.items)
            futures.append(job.future)
        self._arrived.set()
        if self._queued >= self._max_batch:
            self._full.set()
        if len(futures) == 1:
            return await futures[0]
        parts = await asyncio.gather(*futures)
        return np.concatenate([p[0] for p in parts]), [n for p in parts for n in p[1]]

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            await self._slots.acquire()  # a worker is free; until then the queue keeps filling
            if self._pending and self._queued < self._max_batch:
                wait = self._pending[0].arrived + self._max_wait - loop.time()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._full.wait()
            jobs = self._take()
            if not jobs:
                self._slots.release()
                continue
            task = loop.create_task(self._run(jobs))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _take(self) -> list[_Job]:
        """Whole jobs, oldest first, up to ``max_batch`` items; jobs whose caller gave up are dropped."""
        jobs: list[_Job] = []
        size = 0
        while self._pending:
            job = self._pending[0]
            if job.future.done():  # cancelled: the client went away
                self._pending.popleft()
                self._queued -= len(job.items)
                continue
            if size + len(job.items) > self._max_batch:
                break
            self._pending.popleft()
            self._queued -= len(job.items)
            size += len(job.items)
            jobs.append(job)
        if not self._pending:
            self._arrived.clear()
        if self._queued < self._max_batch:
            self._full.clear()
        return jobs

    async def _run(self, jobs: list[_Job]) -> None:
        items = [item for job in jobs for item in job.items]
        try:
            vectors, tokens = await asyncio.get_running_loop().run_in_executor(self._pool, self._encode, items)
        except BaseException as exc:  # the encoder failed, or the batcher is closing: no caller waits forever
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc) if isinstance(exc, Exception) else job.future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._slots.release()
        self.stats.sizes[len(items)] += 1
        start = 0
        for job in jobs:
            end = start + len(job.items)
            if not job.future.done():
                job.future.set_result((vectors[start:end], tokens[start:end]))
            start = end

    async def aclose(self) -> None:
        """Stop collecting; callers still waiting get ``CancelledError``."""
        tasks = [t for t in (self._collector, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for job in self._pending:
            job.future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
