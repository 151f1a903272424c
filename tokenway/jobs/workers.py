"""Job workers: ``Executor`` runs claimed jobs, ``LocalWorkers`` claims them inside the gateway.

The executor keeps each running job's claim alive (renewed every third of ``jobs.lease_s``, checked
every ``jobs.cancel_poll_s``), stops a job whose claim is gone (cancelled, from any process), and
records the outcome under the claim. Celery's worker uses the same executor; only where jobs
come from differs.

``LocalWorkers`` (the embedded default) takes queued jobs from the store, ``jobs.workers`` at a
time, round-robin across the keys that have work queued: a key with a 100,000-line batch gets
one turn in each round like a key with one job, so nobody waits behind someone else's batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterable

from tokenway.jobs.options import JobsConfig
from tokenway.jobs.per_turn import PerTurn
from tokenway.jobs.records import Job
from tokenway.jobs.runner import JobRunner
from tokenway.jobs.service import JobService
from tokenway.observability.logging import JsonLog


class Executor:
    def __init__(self, service: JobService, runner: JobRunner, config: JobsConfig, log: JsonLog,
                 slots: int | None = None) -> None:
        self._service = service
        self._store = service.store
        self._runner = runner
        self._config = config
        self._log = log
        self._running: dict[str, tuple[Job, asyncio.Task[None]]] = {}  # by job id
        self._record = PerTurn(self._store.finish)  # the results of jobs that end together, in one write
        # Jobs run at once (None: the caller bounds them, as Celery's threads do). A slot is taken for
        # the call and given back when the answer is in hand, before its row is written, so the
        # next job is not held up by the store.
        self._slots = asyncio.Semaphore(slots) if slots else contextlib.nullcontext()
        self._renewer: asyncio.Task[None] | None = None

    def new_token(self) -> str:
        return secrets.token_hex(12)

    def lease_until(self) -> float:
        return time.time() + self._config.lease_s

    def start(self) -> None:
        self._renewer = asyncio.get_running_loop().create_task(self._renew())

    async def execute(self, job: Job) -> None:
        """Run a job this process has claimed, and record its outcome."""
        task = asyncio.current_task()
        assert task is not None
        self._running[job.id] = (job, task)
        try:
            async with self._slots:
                done = await self._runner.run(job)
        finally:
            # The outcome is in hand: from here the renewer must not cancel this task, or a result
            # recorded just now would miss its batch's progress (a batch left in ``finalizing``).
            del self._running[job.id]
        if done.webhook_url is not None:
            done.webhook_state = "pending"
        if await self._record(done):
            await self._service.job_done(done)
        else:  # cancelled, or the claim ran out and another attempt holds it: that one records
            self._log.event("job_result_dropped", job_id=job.id, reason="the job is no longer held by this run")

    def cancel(self, job_ids: Iterable[str]) -> None:
        wanted = set(job_ids)
        for job, task in self._running.values():
            if job.id in wanted:
                task.cancel()

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._config.cancel_poll_s)
            running = list(self._running.values())
            if not running:
                continue
            try:
                held = await self._store.renew(list({job.run_token or "" for job, _ in running}), self.lease_until())
            except Exception as exc:  # the store is down: keep running, try again next tick
                self._log.event("jobs_renew_failed", level="error", error=repr(exc))
                continue
            for job, task in running:
                # Still running (not finishing since the renewal was sent), and cancelled elsewhere or
                # the claim was lost: stop calling the backend.
                if job.id not in held and self._running.get(job.id, (job, None))[1] is task:
                    task.cancel()

    async def aclose(self) -> None:
        """Stop: running jobs are cancelled and given back to the queue, to run again at the next start."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        running = list(self._running.values())
        for _, task in running:
            task.cancel()
        await asyncio.gather(*(task for _, task in running), return_exceptions=True)
        for job, _ in running:
            with contextlib.suppress(Exception):
                await self._store.release(job)


class LocalWorkers:
    """The dispatcher of the embedded default: workers inside the gateway process."""

    def __init__(self, service: JobService, executor: Executor, config: JobsConfig, log: JsonLog) -> None:
        self._service = service
        self._store = service.store
        self._executor = executor
        self._config = config
        self._log = log
        self._owners: dict[str, None] = {}  # keys with queued work, in turn order
        # A quarter more jobs than run at once are claimed, so a slot that frees starts the next job
        # at once instead of waiting for a claim; they wait for their slot (the executor's), at most
        # one job's time. None ahead for pools under four, where each job is a large share.
        self._ahead = config.workers // 4
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None

    def submitted(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._owners.setdefault(job.owner)
        self._wake.set()

    def cancelled(self, job_ids: Iterable[str]) -> None:
        self._executor.cancel(job_ids)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        last_look = 0.0
        while True:
            now = time.monotonic()
            if now - last_look >= 1.0:  # jobs requeued, or submitted by another process
                last_look = now
                try:
                    for owner in await self._store.queued_owners():
                        self._owners.setdefault(owner)
                except Exception as exc:
                    self._log.event("jobs_store_failed", level="error", error=repr(exc))
            free = self._config.workers + self._ahead - len(self._tasks)  # tasks not started yet count too
            if free <= 0 or not self._owners:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                continue
            try:
                claimed = await self._claim_round(free)
            except Exception as exc:
                self._log.event("jobs_store_failed", level="error", error=repr(exc))
                await asyncio.sleep(1.0)
                continue
            for job in claimed:
                task = asyncio.get_running_loop().create_task(self._executor.execute(job))
                self._tasks.add(task)
                task.add_done_callback(self._job_ended)

    async def _claim_round(self, free: int) -> list[Job]:
        """One turn for each key with queued work, splitting the free workers between them."""
        owners = list(self._owners)
        share = max(1, free // len(owners))
        claimed: list[Job] = []
        for owner in owners:
            if len(claimed) >= free:
                break
            want = min(share, free - len(claimed))
            jobs = await self._store.claim(owner, want, self._executor.new_token(), self._executor.lease_until(),
                                           time.time())
            self._owners.pop(owner, None)
            if len(jobs) == want:
                self._owners[owner] = None  # more may be queued: to the back of the line
            claimed += jobs
        return claimed

    def _job_ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()  # a worker is free
        if not task.cancelled() and task.exception() is not None:
            self._log.event("job_worker_failed", level="error", error=repr(task.exception()))

    async def aclose(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
