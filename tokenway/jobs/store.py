"""The job store protocol: jobs, files and batches, in SQLite (embedded) or Postgres (a fleet).

Running a job is fenced: claiming it writes a fresh ``run_token``, and only the holder of the
current token can record its result. A worker killed mid-job leaves a lease that runs out; the job
is then claimed again with a new token, so a late answer from the old attempt is dropped and every
job ends with exactly one result.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import orjson

from tokenway.jobs.records import Batch, BatchStatus, Job, JobStatus, StoredFile


class JobStore(Protocol):
    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    # Jobs.
    async def add_job(self, job: Job) -> tuple[Job, bool]:
        """Insert ``job``; with an idempotency key already used by its owner, the job kept under it
        (and False)."""

    async def add_jobs(self, jobs: list[Job]) -> None:
        """Insert many jobs in one transaction (a batch's lines)."""

    async def get_job(self, job_id: str) -> Job | None: ...

    async def find_job(self, owner: str, idempotency_key: str) -> Job | None:
        """The owner's job submitted with this idempotency key."""

    async def list_jobs(self, owner: str | None, status: str | None, limit: int, after: str | None) -> list[Job]:
        """Async jobs (not batch lines), newest first; ``after``: the id the previous page ended with."""

    async def queued_counts(self, owner: str) -> tuple[int, int]:
        """Queued jobs in total, and of ``owner``."""

    async def queued_owners(self) -> list[str]: ...

    async def claim(self, owner: str, limit: int, token: str, lease_until: float, now: float) -> list[Job]:
        """Up to ``limit`` of ``owner``'s queued jobs, highest priority then oldest first, now running."""

    async def claim_job(self, job_id: str, token: str, lease_until: float, now: float) -> Job | None:
        """That job, now running, if it was queued or its last claim ran out; else None."""

    async def renew(self, tokens: list[str], lease_until: float) -> set[str]:
        """Extend the leases of these runs; the ids of the jobs they still hold (the rest were cancelled)."""

    async def finish(self, jobs: list[Job]) -> list[bool]:
        """Record each job's status and result if its run token still holds the job (one transaction)."""

    async def pending_webhooks(self, finished_before: float, limit: int) -> list[Job]:
        """Finished jobs whose webhook was never delivered nor given up on (their process died)."""

    async def set_webhook_state(self, job_id: str, state: str) -> None: ...

    async def release(self, job: Job) -> None:
        """Give a running job back to the queue (its worker is stopping)."""

    async def cancel_job(self, job_id: str, now: float, status: JobStatus = "cancelled") -> Job | None:
        """Queued or running → cancelled (or expired: a batch's window ended); None when it had already finished."""

    async def requeue_expired(self, now: float) -> int:
        """Running jobs whose lease ran out go back to the queue."""

    async def fail_queued(self, batch_id: str, status: JobStatus, status_code: int | None, result: bytes | None,
                          now: float) -> int:
        """End every queued line of a batch with this status and result (budget spent, expired, cancelled)."""

    async def status_counts(self) -> tuple[dict[str, int], float | None]:
        """Jobs by status, and when the oldest queued job was submitted."""

    async def batch_counts(self, batch_id: str) -> dict[str, int]: ...

    async def batch_open(self, batch_id: str) -> bool:
        """Whether any line of the batch is queued or running."""

    async def running_lines(self, batch_id: str) -> list[str]:
        """The ids of a batch's running lines."""

    async def batch_last_line(self, batch_id: str) -> int:
        """The highest line of the batch written so far (0: none)."""

    async def batch_lines(self, batch_id: str, after_line: int, limit: int) -> list[Job]:
        """A batch's lines in line order, for its output and error files."""

    async def purge(self, before: float) -> list[str]:
        """Delete async jobs finished, batches ended (with their lines) and files made before ``before``,
        except files an unfinished batch reads; the ids of the files deleted."""

    # Files.
    async def add_file(self, file: StoredFile) -> None: ...

    async def get_file(self, file_id: str) -> StoredFile | None: ...

    async def list_files(self, owner: str | None, purpose: str | None, limit: int, after: str | None
                         ) -> list[StoredFile]: ...

    async def delete_file(self, file_id: str) -> None: ...

    # Batches.
    async def add_batch(self, batch: Batch) -> None: ...

    async def get_batch(self, batch_id: str) -> Batch | None: ...

    async def list_batches(self, owner: str | None, limit: int, after: str | None) -> list[Batch]: ...

    async def batches_in(self, statuses: tuple[BatchStatus, ...]) -> list[Batch]: ...

    async def update_batch(self, batch_id: str, expect: tuple[BatchStatus, ...], change: Callable[[Batch], bool | None]
                           ) -> Batch | None:
        """Apply ``change`` to the batch in one transaction if its status is one of ``expect`` (and
        ``change`` does not return False); the batch as changed, or None."""


def open_job_store(database_url: str | None, data_dir: Path) -> JobStore:
    if database_url:
        from tokenway.jobs.postgres import PostgresJobStore

        return PostgresJobStore(database_url)
    from tokenway.jobs.sqlite import SqliteJobStore

    return SqliteJobStore(data_dir / "jobs.db")


# The columns both SQL stores keep, in the order rows are read and written.
JOB_COLUMNS = ("id", "owner", "kind", "body", "created_at", "status", "priority", "batch_id", "line", "custom_id",
               "idempotency_key", "body_hash", "webhook_url", "attempts", "run_token", "lease_until",
               "started_at", "finished_at", "status_code", "result", "request_id", "webhook_state")


def job_row(job: Job) -> tuple[object, ...]:
    return tuple(getattr(job, name) for name in JOB_COLUMNS)


def job_from_row(row: object) -> Job:
    values = dict(zip(JOB_COLUMNS, row, strict=True))  # type: ignore[call-overload]
    for blob in ("body", "result"):
        if values[blob] is not None:
            values[blob] = bytes(values[blob])
    return Job(**values)


def batch_data(batch: Batch) -> bytes:
    return orjson.dumps(batch)


def batch_from_data(data: bytes | str) -> Batch:
    return Batch(**orjson.loads(data))
