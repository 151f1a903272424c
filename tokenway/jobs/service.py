"""What the API, the workers and the CLI do with jobs, files and batches.

Submitting writes the job to the store before the 202 goes out (nothing accepted is lost) and
tells the dispatcher: the workers in this process, or Celery. A batch is checked line by line in
the background (``validating``), each valid line becomes a job (``in_progress``), and when the
last line is done its output and error files are written (``finalizing`` → ``completed``). A
batch whose completion window ends has its lines not yet started reported as expired; one that
is cancelled stops its queued lines at once and its running ones within ``jobs.cancel_poll_s``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from tokenway.errors import (
    BudgetExceeded,
    GatewayError,
    InvalidRequest,
    NotFound,
    RateLimited,
)
from tokenway.ids import IdGenerator
from tokenway.jobs.batch_lines import Validate, output_line, read_input
from tokenway.jobs.files import FileContents, ResultWriter
from tokenway.jobs.options import JobsConfig
from tokenway.jobs.per_turn import PerTurn
from tokenway.jobs.records import ENDPOINTS, FINISHED, Batch, Job, JobStatus, StoredFile
from tokenway.jobs.store import JobStore
from tokenway.jobs.webhooks import Webhooks
from tokenway.observability.logging import JsonLog


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class Dispatch(Protocol):
    """Where new jobs go to be run, and where a cancel is passed on."""

    def submitted(self, jobs: list[Job]) -> None: ...

    def cancelled(self, job_ids: Iterable[str]) -> None: ...


@dataclass(slots=True)
class JobCounts:
    """A snapshot of the store for metrics and ``/admin/jobs``."""

    by_status: dict[str, int]
    oldest_queued_at: float | None


_WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
STALE_STEP_S = 60.0  # a batch validating or finalizing this long without progress lost its process
PURGE_EVERY_S = 3600.0  # how often what is older than jobs.keep_days is deleted
BATCH_CHECK_S = 0.1  # a batch's last line ending to its files being written, at most this (plus the writing)
LINES_PER_WRITE = 500  # batch lines checked and written at a time
ROOM_REFRESH_S = 1.0  # how old the queue counts behind the 429 bounds may be
SWEEP_S = 5.0  # how often every running batch is checked for an end that nobody noticed
WEBHOOK_RESEND_S = 300.0  # a webhook still pending this long after its job ended lost its process


def window_seconds(window: object) -> float:
    """``24h`` (OpenAI's only value), or any ``<n>s|m|h|d`` from a minute to a week."""
    if isinstance(window, str) and len(window) > 1 and window[:-1].isdigit() and window[-1] in _WINDOW_UNITS:
        seconds = int(window[:-1]) * _WINDOW_UNITS[window[-1]]
        if 1 <= seconds <= 7 * 86400:
            return float(seconds)
    raise InvalidRequest("'completion_window' must be like '24h' (from '1s' up to '7d').", param="completion_window")


class JobService:
    def __init__(self, store: JobStore, contents: FileContents, config: JobsConfig, log: JsonLog,
                 webhooks: Webhooks | None = None) -> None:
        self.store = store
        self.contents = contents
        self.config = config
        self._log = log
        self._webhooks = webhooks
        self.dispatch: Dispatch | None = None  # set once the workers or the Celery client exist
        # The check of a batch line for an owner, as the live endpoint checks a request from that key.
        self.validator: Callable[[str], Validate] | None = None
        self._new_job_id = IdGenerator("job_")
        self._new_file_id = IdGenerator("file-")
        self._new_batch_id = IdGenerator("batch_")
        self._tasks: set[asyncio.Task[None]] = set()
        self._starting: set[str] = set()  # batches this process is validating now
        self._purged = -PURGE_EVERY_S  # the first maintenance purges at once
        self._webhooks_checked = 0.0
        self._swept = 0.0
        self._room: dict[str, list[float]] = {}  # owner -> [read at, queued in total, queued by the owner]
        self._insert = PerTurn(self._add_jobs)
        self._checks: set[str] = set()  # batches whose end is about to be looked for
        self.on_finished: list[Callable[[Job], None]] = []  # metrics

    # Async jobs.
    async def submit(self, owner: str, kind: str, body: bytes, idempotency_key: str | None = None,
                     webhook_url: str | None = None) -> tuple[Job, bool]:
        """The new job (True), or the one already submitted under ``idempotency_key`` (False)."""
        digest = hashlib.sha256(body).hexdigest()
        if idempotency_key is not None:
            kept = await self._by_idempotency_key(owner, idempotency_key, digest)
            if kept is not None:
                return kept, False
        await self._check_room(owner, 1)
        job = Job(id=self._new_job_id(), owner=owner, kind=kind, body=body, created_at=time.time(),
                  idempotency_key=idempotency_key, body_hash=digest, webhook_url=webhook_url)
        if idempotency_key is None:
            await self._insert(job)  # with the other submits of this moment, in one write
            stored, created = job, True
        else:
            stored, created = await self.store.add_job(job)
        if not created:
            _same_body(stored, digest, idempotency_key or "")
            return stored, False
        self._dispatch().submitted([job])
        return job, True

    async def _by_idempotency_key(self, owner: str, key: str, digest: str) -> Job | None:
        # The store's unique index decides in the end (two submits at once); this read answers the
        # common case, a client retrying, before the queue bounds are checked.
        job = await self.store.find_job(owner, key)
        return None if job is None else _same_body(job, digest, key)

    async def _check_room(self, owner: str, adding: int) -> None:
        """429 past a queue bound. Within the bounds the counts read in the last second, counted on
        locally, are enough; a refusal is always checked against the store first."""
        room = self._room.get(owner)
        if room is None or time.monotonic() - room[0] >= ROOM_REFRESH_S or not self._fits(room, adding):
            room = self._room[owner] = [time.monotonic(), *await self.store.queued_counts(owner)]
        total, mine = int(room[1]), int(room[2])
        if total + adding > self.config.max_queued:
            raise RateLimited(f"The gateway has {total} jobs queued, its limit (jobs.max_queued is "
                              f"{self.config.max_queued}); retry later.", retry_after=30, code="jobs_queue_full")
        if mine + adding > self.config.max_queued_per_key:
            raise RateLimited(f"This key has {mine} jobs queued; the limit per key is "
                              f"{self.config.max_queued_per_key} (jobs.max_queued_per_key). Wait for some to "
                              "finish.", retry_after=30, code="jobs_queue_full")
        room[1] += adding
        room[2] += adding

    def _fits(self, room: list[float], adding: int) -> bool:
        return (room[1] + adding <= self.config.max_queued and room[2] + adding <= self.config.max_queued_per_key)

    async def _add_jobs(self, jobs: list[Job]) -> list[None]:
        await self.store.add_jobs(jobs)
        return [None] * len(jobs)

    async def job(self, owner: str | None, job_id: str) -> Job:
        """The job, if ``owner`` may see it (None: an admin, who sees every job); else 404."""
        return _visible(await self.store.get_job(job_id), owner, "job", job_id)

    async def cancel(self, owner: str | None, job_id: str) -> Job:
        job = await self.job(owner, job_id)
        if job.batch_id is not None:
            raise InvalidRequest(f"Job '{job_id}' is a line of batch '{job.batch_id}'; cancel the batch.")
        cancelled = await self.store.cancel_job(job_id, time.time())
        if cancelled is None:
            latest = await self.job(owner, job_id)
            raise Conflict(f"Job '{job_id}' has already finished ({latest.status}); there is nothing to cancel.")
        self._dispatch().cancelled([job_id])
        self.finished(cancelled)
        return cancelled

    def finished(self, job: Job) -> None:
        """A job's outcome is recorded: tell whoever listens, call its webhook."""
        for listener in self.on_finished:
            listener(job)
        if self._webhooks is not None and job.webhook_url is not None:
            self._webhooks.send(job)

    async def job_done(self, job: Job) -> None:
        """After a worker recorded a job's result: the finish hooks, and the batch's progress."""
        self.finished(job)
        if job.batch_id is None:
            return
        if job.status_code == BudgetExceeded.status and _error_code(job.result) == BudgetExceeded.code:
            # The budget is spent: the batch stops here, its remaining lines fail with the same error.
            await self.store.fail_queued(job.batch_id, "failed", BudgetExceeded.status, job.result, time.time())
        self._check_batch_soon(job.batch_id)

    def _check_batch_soon(self, batch_id: str) -> None:
        """Whether the batch is done, looked at once for all its lines that end within BATCH_CHECK_S."""
        if batch_id in self._checks:
            return
        self._checks.add(batch_id)

        async def check() -> None:
            await asyncio.sleep(BATCH_CHECK_S)
            self._checks.discard(batch_id)  # a line ending from here on asks again
            await self.finish_batch_if_done(batch_id)

        self._background(check())

    # Files.
    async def upload(self, owner: str, filename: str, purpose: str, chunks: AsyncIterator[bytes]) -> StoredFile:
        if purpose != "batch":
            raise InvalidRequest(f"'purpose' must be 'batch' here, not {purpose!r}.", param="purpose")
        file_id = self._new_file_id()
        size = await self.contents.write_upload(file_id, chunks, self.config.max_file_bytes)
        record = StoredFile(file_id, owner, purpose, filename, size, time.time())
        await self.store.add_file(record)
        return record

    async def file(self, owner: str | None, file_id: str) -> StoredFile:
        return _visible(await self.store.get_file(file_id), owner, "file", file_id)

    async def delete_file(self, owner: str | None, file_id: str) -> StoredFile:
        record = await self.file(owner, file_id)
        await self.store.delete_file(file_id)
        self.contents.delete(file_id)
        return record

    # Batches.
    async def create_batch(self, owner: str, input_file_id: object, endpoint: object, completion_window: object,
                           metadata: object) -> Batch:
        if endpoint not in ENDPOINTS.values():
            raise InvalidRequest(f"'endpoint' must be one of {', '.join(ENDPOINTS.values())}.", param="endpoint")
        if not isinstance(input_file_id, str):
            raise InvalidRequest("'input_file_id' must be a file id.", param="input_file_id")
        window = window_seconds(completion_window)
        if metadata is not None and not (isinstance(metadata, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
            raise InvalidRequest("'metadata' must map strings to strings.", param="metadata")
        source = await self.file(owner, input_file_id)
        if source.purpose != "batch":
            raise InvalidRequest(f"File '{input_file_id}' has purpose {source.purpose!r}, not 'batch'.",
                                 param="input_file_id")
        now = time.time()
        batch = Batch(id=self._new_batch_id(), owner=owner, endpoint=str(endpoint), input_file_id=input_file_id,
                      completion_window=str(completion_window), created_at=now, expires_at=now + window,
                      metadata=metadata)  # type: ignore[arg-type]
        await self.store.add_batch(batch)
        self._background(self._start_batch(batch))
        return batch

    async def _start_batch(self, batch: Batch) -> None:
        """``validating`` → ``in_progress``: every line checked, the valid ones queued as jobs."""
        self._starting.add(batch.id)
        try:
            await self._check_lines(batch)
        finally:
            self._starting.discard(batch.id)

    async def _check_lines(self, batch: Batch) -> None:
        """Read the input a slice at a time, writing each slice's jobs: memory stays flat whatever the
        file's size, and the event loop serves live traffic between slices. After a restart, the
        lines already written are skipped."""
        assert self.validator is not None, "JobService.validator is set when the jobs start"
        path = self.contents.path(batch.input_file_id)
        try:
            validate = self.validator(batch.owner)  # 401 here: the key was revoked since the upload
            written = await self.store.batch_last_line(batch.id)
            count = await asyncio.to_thread(_count_lines, path)
            if not count:
                raise InvalidRequest("The input file has no lines.", param="input_file_id")
            if not written:
                await self._check_room(batch.owner, min(count, self.config.max_batch_lines))
        except GatewayError as error:
            await self._fail_batch(batch, error)
            return
        kind = "chat" if batch.endpoint == ENDPOINTS["chat"] else "completions"
        total = 0
        pending: list[Job] = []
        with path.open("rb") as source:
            for line in read_input(source, batch.endpoint, validate, self.config.max_batch_lines):
                total += 1
                if line.line <= written:
                    continue
                job = Job(id=self._new_job_id(), owner=batch.owner, kind=kind, body=line.body, created_at=time.time(),
                          priority=-1, batch_id=batch.id, line=line.line, custom_id=line.custom_id)
                if line.error is not None:
                    job.status, job.status_code, job.result, job.finished_at = (
                        "failed", line.error.status, line.error.envelope(), job.created_at)
                pending.append(job)
                if len(pending) >= LINES_PER_WRITE:
                    await self.store.add_jobs(pending)
                    pending = []
        if pending:
            await self.store.add_jobs(pending)
        await self._begin(batch, total)

    async def _begin(self, batch: Batch, total: int) -> None:
        def started(kept: Batch) -> None:
            kept.status, kept.total = "in_progress", total
            kept.times["in_progress_at"] = time.time()

        if await self.store.update_batch(batch.id, ("validating",), started) is None:
            # Cancelled while it was being read: its lines never run.
            await self.store.fail_queued(batch.id, "cancelled", None, None, time.time())
            await self._stop_running(batch.id, "cancelled")
            await self.finish_batch_if_done(batch.id)
            return
        queued: list[Job] = []
        async for job in self._lines(batch.id):  # a page at a time, like everything over a batch's lines
            if job.status == "queued":
                queued.append(job)
            if len(queued) >= LINES_PER_WRITE:
                self._dispatch().submitted(queued)
                queued = []
        self._dispatch().submitted(queued)
        await self.finish_batch_if_done(batch.id)  # every line may have been invalid

    async def _fail_batch(self, batch: Batch, error: GatewayError) -> None:
        def failed(kept: Batch) -> None:
            kept.status = "failed"
            kept.times["failed_at"] = time.time()
            kept.errors = [{"code": error.code or "invalid_file", "message": error.message, "param": error.param,
                            "line": None}]

        await self.store.update_batch(batch.id, ("validating",), failed)

    async def batch(self, owner: str | None, batch_id: str) -> Batch:
        return _visible(await self.store.get_batch(batch_id), owner, "batch", batch_id)

    async def batch_view(self, batch: Batch) -> dict[str, Any]:
        return batch.public(await self.store.batch_counts(batch.id))

    async def cancel_batch(self, owner: str | None, batch_id: str) -> Batch:
        batch = await self.batch(owner, batch_id)

        def cancelling(kept: Batch) -> None:
            kept.status = "cancelling"
            kept.times["cancelling_at"] = time.time()

        changed = await self.store.update_batch(batch_id, ("validating", "in_progress"), cancelling)
        if changed is None:
            if batch.status in ("cancelling", "cancelled"):
                return batch
            raise Conflict(f"Batch '{batch_id}' is {batch.status}; only a validating or in-progress batch can be "
                           "cancelled.")
        await self.store.fail_queued(batch_id, "cancelled", None, None, time.time())
        await self._stop_running(batch_id, "cancelled")
        await self.finish_batch_if_done(batch_id)
        return changed

    async def expire_batches(self) -> None:
        """Batches past their completion window: what is not done is stopped and reported expired."""
        now = time.time()
        for batch in await self.store.batches_in(("in_progress",)):
            if batch.expires_at <= now:
                expired = await self.store.fail_queued(batch.id, "expired", None, None, now)
                expired += len(await self._stop_running(batch.id, "expired"))
                if expired:
                    self._log.event("batch_expired", batch_id=batch.id, owner=batch.owner, lines=expired)
                await self.finish_batch_if_done(batch.id)

    async def _stop_running(self, batch_id: str, status: JobStatus) -> list[str]:
        """End a batch's running lines with ``status``; their workers stop calling the backend."""
        running = await self.store.running_lines(batch_id)
        for job_id in running:
            await self.store.cancel_job(job_id, time.time(), status)
        self._dispatch().cancelled(running)
        return running

    async def finish_batch_if_done(self, batch_id: str) -> None:
        """When no line is queued or running, write the output and error files and end the batch."""
        if await self.store.batch_open(batch_id):
            return
        counts = await self.store.batch_counts(batch_id)
        def finalizing(kept: Batch) -> None:
            kept.outcome = ("cancelled" if kept.status == "cancelling"
                            else "expired" if counts.get("expired", 0) else "completed")
            kept.status = "finalizing"
            kept.times["finalizing_at"] = time.time()

        batch = await self.store.update_batch(batch_id, ("in_progress", "cancelling"), finalizing)
        if batch is not None:  # else another worker finalizes it, or it is already done
            await self._write_results(batch)

    async def _write_results(self, batch: Batch) -> None:
        """``finalizing`` → its outcome: the output and error files written a page of lines at a time,
        the batch ended."""
        now = time.time()
        output, errors = self.contents.writer(self._new_file_id()), self.contents.writer(self._new_file_id())
        try:
            async for job in self._lines(batch.id):
                if job.status in FINISHED:
                    (output if job.status == "succeeded" else errors).write(output_line(job))
            files = [await self._result_file(batch, purpose, writer, now)
                     for purpose, writer in (("batch_output", output), ("batch_error", errors))]
        finally:
            output.discard()
            errors.discard()
        outcome = batch.outcome or "completed"

        def ended(kept: Batch) -> None:
            kept.status = outcome
            kept.output_file_id, kept.error_file_id = files
            kept.times[f"{outcome}_at"] = time.time()

        await self.store.update_batch(batch.id, ("finalizing",), ended)
        self._log.event("batch_finished", batch_id=batch.id, status=outcome, owner=batch.owner,
                        lines=output.lines + errors.lines, failed=errors.lines)

    async def _result_file(self, batch: Batch, purpose: str, writer: ResultWriter, now: float) -> str | None:
        if not writer.lines:
            return None
        size = await writer.commit()
        name = f"{batch.id}_{purpose}.jsonl"
        await self.store.add_file(StoredFile(writer.file_id, batch.owner, purpose, name, size, now))
        return writer.file_id

    async def _lines(self, batch_id: str) -> AsyncIterator[Job]:
        """A batch's lines in order, read a page at a time (a batch may hold 50,000)."""
        after = 0
        while True:
            page = await self.store.batch_lines(batch_id, after, 1000)
            for job in page:
                yield job
            if len(page) < 1000:
                return
            after = page[-1].line or 0

    # Housekeeping.
    async def counts(self) -> JobCounts:
        by_status, oldest = await self.store.status_counts()
        return JobCounts(by_status, oldest)

    async def maintain(self) -> None:
        """Once a second or so: leases that ran out go back to the queue, windows that ended expire, and
        batches left half-way through a step by a process that died are taken over."""
        requeued = await self.store.requeue_expired(time.time())
        if requeued:
            self._log.event("jobs_requeued", count=requeued, reason="their worker stopped renewing the claim")
            self._dispatch().submitted([])
        await self.expire_batches()
        await self._resume_batches()
        if time.monotonic() - self._swept >= SWEEP_S:  # a worker that stopped before its batch check ran
            self._swept = time.monotonic()
            for batch in await self.store.batches_in(("in_progress", "cancelling")):
                await self.finish_batch_if_done(batch.id)
        if self._webhooks is not None and time.monotonic() - self._webhooks_checked >= WEBHOOK_RESEND_S:
            self._webhooks_checked = time.monotonic()
            # Deliveries a process that died left pending: sent again (a receiver may see one twice).
            for job in await self.store.pending_webhooks(time.time() - WEBHOOK_RESEND_S, 1000):
                self._webhooks.send(job)
        if time.monotonic() - self._purged >= PURGE_EVERY_S:
            self._purged = time.monotonic()
            for file_id in await self.store.purge(time.time() - self.config.keep_days * 86400):
                self.contents.delete(file_id)

    async def _resume_batches(self) -> None:
        """A batch still validating or finalizing long after that step began lost the process doing it."""
        now = time.time()
        for batch in await self.store.batches_in(("validating", "finalizing")):
            step = "finalizing_at" if batch.status == "finalizing" else "validating_at"
            if now - batch.times.get(step, batch.created_at) < STALE_STEP_S or batch.id in self._starting:
                continue

            def take_over(kept: Batch, step: str = step) -> bool:
                if now - kept.times.get(step, kept.created_at) < STALE_STEP_S:
                    return False  # another process took it over first
                kept.times[step] = now
                return True

            taken = await self.store.update_batch(batch.id, (batch.status,), take_over)
            if taken is None:
                continue
            self._log.event("batch_resumed", batch_id=batch.id, step=batch.status)
            if taken.status == "finalizing":
                await self._write_results(taken)
            else:
                self._background(self._start_batch(taken))

    def _dispatch(self) -> Dispatch:
        assert self.dispatch is not None, "JobService.dispatch is set when the jobs start"
        return self.dispatch

    def _background(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._webhooks is not None:
            await self._webhooks.aclose()


def _same_body(job: Job, digest: str, key: str) -> Job:
    if job.body_hash != digest:
        raise Conflict(f"The Idempotency-Key {key!r} was already used with a different request body; use a new "
                       "key for a new request.", param="Idempotency-Key")
    return job


def _error_code(envelope: bytes | None) -> str | None:
    try:
        return str(orjson.loads(envelope or b"{}")["error"]["code"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def _count_lines(path: Path) -> int:
    """Non-blank lines of a file, read in blocks (a first look, before any line is checked)."""
    with path.open("rb") as source:
        return sum(1 for line in source if line.strip())


Owned = TypeVar("Owned", Job, StoredFile, Batch)


def _visible(record: Owned | None, owner: str | None, kind: str, record_id: str) -> Owned:
    """The record if ``owner`` may see it (None: an admin, who sees everything). Another tenant's record
    gets the same 404 as an id that never existed, so nobody learns what others have."""
    if record is None or (owner is not None and record.owner != owner):
        raise NotFound(f"No {kind} with id '{record_id}'.", param=f"{kind}_id")
    return record
