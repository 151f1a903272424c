"""The job store in Postgres (asyncpg): shared by every gateway and Celery worker of a fleet.

Claims take rows with ``FOR UPDATE SKIP LOCKED``, so any number of workers pull from one queue
without waiting on each other.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from tokenway.jobs.records import Batch, BatchStatus, Job, JobStatus, StoredFile
from tokenway.jobs.store import JOB_COLUMNS, batch_data, batch_from_data, job_from_row, job_row

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokenway_jobs (
  seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, owner TEXT NOT NULL, kind TEXT NOT NULL,
  body BYTEA NOT NULL, created_at DOUBLE PRECISION NOT NULL, status TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0,
  batch_id TEXT, line INTEGER, custom_id TEXT, idempotency_key TEXT, body_hash TEXT, webhook_url TEXT,
  attempts INTEGER NOT NULL DEFAULT 0, run_token TEXT, lease_until DOUBLE PRECISION,
  started_at DOUBLE PRECISION, finished_at DOUBLE PRECISION, status_code INTEGER, result BYTEA, request_id TEXT,
  webhook_state TEXT);
CREATE INDEX IF NOT EXISTS tokenway_jobs_queue ON tokenway_jobs (status, owner, priority DESC, seq);
CREATE INDEX IF NOT EXISTS tokenway_jobs_owner ON tokenway_jobs (owner, seq);
CREATE INDEX IF NOT EXISTS tokenway_jobs_batch ON tokenway_jobs (batch_id, status, line);
CREATE UNIQUE INDEX IF NOT EXISTS tokenway_jobs_idempotency ON tokenway_jobs (owner, idempotency_key)
  WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS tokenway_files (
  seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, owner TEXT NOT NULL, purpose TEXT NOT NULL,
  filename TEXT NOT NULL, bytes BIGINT NOT NULL, created_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS tokenway_batches (
  seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, owner TEXT NOT NULL, status TEXT NOT NULL, data BYTEA NOT NULL);
CREATE INDEX IF NOT EXISTS tokenway_batches_status ON tokenway_batches (status);
"""

_COLUMNS = ", ".join(JOB_COLUMNS)
_MARKS = ", ".join(f"${i}" for i in range(1, len(JOB_COLUMNS) + 1))
_SELECT_JOB = f"SELECT {_COLUMNS} FROM tokenway_jobs"
_FILE_COLUMNS = "id, owner, purpose, filename, bytes, created_at"


class PostgresJobStore:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "PostgresJobStore.start() was not awaited"
        return self._pool

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=8, command_timeout=30, timeout=5)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(7426116)")  # processes starting together
            await conn.execute(_SCHEMA)

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # Jobs.
    async def add_job(self, job: Job) -> tuple[Job, bool]:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                f"INSERT INTO tokenway_jobs ({_COLUMNS}) VALUES ({_MARKS}) ON CONFLICT DO NOTHING RETURNING id",
                *job_row(job))
            if row is not None:
                return job, True
            kept = await conn.fetchrow(f"{_SELECT_JOB} WHERE owner = $1 AND idempotency_key = $2",
                                       job.owner, job.idempotency_key)
            if kept is None:
                raise RuntimeError(f"job {job.id} was neither inserted nor found under its idempotency key")
            return job_from_row(kept), False

    async def add_jobs(self, jobs: list[Job]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(f"INSERT INTO tokenway_jobs ({_COLUMNS}) VALUES ({_MARKS})",
                                   [job_row(job) for job in jobs])

    async def get_job(self, job_id: str) -> Job | None:
        row = await self.pool.fetchrow(f"{_SELECT_JOB} WHERE id = $1", job_id)
        return job_from_row(row) if row else None

    async def find_job(self, owner: str, idempotency_key: str) -> Job | None:
        row = await self.pool.fetchrow(f"{_SELECT_JOB} WHERE owner = $1 AND idempotency_key = $2",
                                       owner, idempotency_key)
        return job_from_row(row) if row else None

    async def list_jobs(self, owner: str | None, status: str | None, limit: int, after: str | None) -> list[Job]:
        where, args = _filters({"owner": owner, "status": status}, "tokenway_jobs", after)
        where.insert(0, "batch_id IS NULL")
        rows = await self.pool.fetch(
            f"{_SELECT_JOB} WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ${len(args) + 1}", *args, limit)
        return [job_from_row(r) for r in rows]

    async def queued_counts(self, owner: str) -> tuple[int, int]:
        row = await self.pool.fetchrow(
            "SELECT count(*), count(*) FILTER (WHERE owner = $1) FROM tokenway_jobs WHERE status = 'queued'", owner)
        return int(row[0]), int(row[1])

    async def queued_owners(self) -> list[str]:
        rows = await self.pool.fetch("SELECT DISTINCT owner FROM tokenway_jobs WHERE status = 'queued'")
        return [r[0] for r in rows]

    async def claim(self, owner: str, limit: int, token: str, lease_until: float, now: float) -> list[Job]:
        rows = await self.pool.fetch(
            "UPDATE tokenway_jobs SET status = 'running', run_token = $1, lease_until = $2, "
            "attempts = attempts + 1, started_at = coalesce(started_at, $3) WHERE id IN (SELECT id FROM tokenway_jobs "
            "WHERE status = 'queued' AND owner = $4 ORDER BY priority DESC, seq LIMIT $5 FOR UPDATE SKIP LOCKED) "
            f"RETURNING {_COLUMNS}", token, lease_until, now, owner, limit)
        return sorted((job_from_row(r) for r in rows), key=lambda j: (-j.priority, j.created_at))

    async def claim_job(self, job_id: str, token: str, lease_until: float, now: float) -> Job | None:
        row = await self.pool.fetchrow(
            "UPDATE tokenway_jobs SET status = 'running', run_token = $1, lease_until = $2, "
            "attempts = attempts + 1, started_at = coalesce(started_at, $3) WHERE id = $4 "
            "AND (status = 'queued' OR (status = 'running' AND lease_until < $3)) "
            f"RETURNING {_COLUMNS}", token, lease_until, now, job_id)
        return job_from_row(row) if row else None

    async def renew(self, tokens: list[str], lease_until: float) -> set[str]:
        if not tokens:
            return set()
        rows = await self.pool.fetch(
            "UPDATE tokenway_jobs SET lease_until = $1 WHERE status = 'running' AND run_token = ANY($2::text[]) "
            "RETURNING id", lease_until, tokens)
        return {r[0] for r in rows}

    async def finish(self, jobs: list[Job]) -> list[bool]:
        columns = [[getattr(job, name) for job in jobs] for name in (
            "id", "run_token", "status", "attempts", "finished_at", "status_code", "result", "request_id",
            "webhook_state")]
        rows = await self.pool.fetch(
            "UPDATE tokenway_jobs AS j SET status = v.status, attempts = v.attempts, finished_at = v.finished_at, "
            "status_code = v.status_code, result = v.result, request_id = v.request_id, "
            "webhook_state = v.webhook_state, lease_until = NULL "
            "FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::float8[], $6::int[], $7::bytea[], "
            "$8::text[], $9::text[]) AS v(id, run_token, status, attempts, finished_at, status_code, result, "
            "request_id, webhook_state) "
            "WHERE j.id = v.id AND j.run_token = v.run_token AND j.status = 'running' RETURNING j.id", *columns)
        recorded = {r[0] for r in rows}
        return [job.id in recorded for job in jobs]

    async def pending_webhooks(self, finished_before: float, limit: int) -> list[Job]:
        rows = await self.pool.fetch(f"{_SELECT_JOB} WHERE webhook_state = 'pending' AND finished_at < $1 LIMIT $2",
                                     finished_before, limit)
        return [job_from_row(r) for r in rows]

    async def set_webhook_state(self, job_id: str, state: str) -> None:
        await self.pool.execute("UPDATE tokenway_jobs SET webhook_state = $1 WHERE id = $2", state, job_id)

    async def release(self, job: Job) -> None:
        await self.pool.execute(
            "UPDATE tokenway_jobs SET status = 'queued', lease_until = NULL, attempts = $1 "
            "WHERE id = $2 AND run_token = $3 AND status = 'running'", job.attempts, job.id, job.run_token)

    async def cancel_job(self, job_id: str, now: float, status: JobStatus = "cancelled") -> Job | None:
        row = await self.pool.fetchrow(
            "UPDATE tokenway_jobs SET status = $3, finished_at = $1, lease_until = NULL, "
            "webhook_state = CASE WHEN webhook_url IS NULL THEN NULL ELSE 'pending' END "
            f"WHERE id = $2 AND status IN ('queued', 'running') RETURNING {_COLUMNS}", now, job_id, status)
        return job_from_row(row) if row else None

    async def requeue_expired(self, now: float) -> int:
        status = await self.pool.execute(
            "UPDATE tokenway_jobs SET status = 'queued' WHERE status = 'running' AND lease_until < $1", now)
        return int(status.split()[-1])

    async def fail_queued(self, batch_id: str, status: JobStatus, status_code: int | None, result: bytes | None,
                          now: float) -> int:
        done = await self.pool.execute(
            "UPDATE tokenway_jobs SET status = $1, status_code = $2, result = $3, finished_at = $4 "
            "WHERE batch_id = $5 AND status = 'queued'", status, status_code, result, now, batch_id)
        return int(done.split()[-1])

    async def status_counts(self) -> tuple[dict[str, int], float | None]:
        rows = await self.pool.fetch("SELECT status, count(*) FROM tokenway_jobs GROUP BY status")
        oldest = await self.pool.fetchval("SELECT min(created_at) FROM tokenway_jobs WHERE status = 'queued'")
        return {r[0]: int(r[1]) for r in rows}, oldest

    async def batch_counts(self, batch_id: str) -> dict[str, int]:
        rows = await self.pool.fetch(
            "SELECT status, count(*) FROM tokenway_jobs WHERE batch_id = $1 GROUP BY status", batch_id)
        return {r[0]: int(r[1]) for r in rows}

    async def batch_open(self, batch_id: str) -> bool:
        return bool(await self.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM tokenway_jobs WHERE batch_id = $1 AND status IN ('queued', 'running'))",
            batch_id))

    async def running_lines(self, batch_id: str) -> list[str]:
        rows = await self.pool.fetch("SELECT id FROM tokenway_jobs WHERE batch_id = $1 AND status = 'running'",
                                     batch_id)
        return [r[0] for r in rows]

    async def batch_last_line(self, batch_id: str) -> int:
        return int(await self.pool.fetchval(
            "SELECT coalesce(max(line), 0) FROM tokenway_jobs WHERE batch_id = $1", batch_id))

    async def batch_lines(self, batch_id: str, after_line: int, limit: int) -> list[Job]:
        rows = await self.pool.fetch(
            f"{_SELECT_JOB} WHERE batch_id = $1 AND line > $2 ORDER BY line LIMIT $3", batch_id, after_line, limit)
        return [job_from_row(r) for r in rows]

    async def purge(self, before: float) -> list[str]:
        ended = ["completed", "failed", "expired", "cancelled"]
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch("SELECT data FROM tokenway_batches WHERE status = ANY($1::text[])", ended)
            old = [b.id for b in (batch_from_data(r[0]) for r in rows)
                   if max(b.times.values(), default=b.created_at) < before]
            await conn.execute("DELETE FROM tokenway_jobs WHERE batch_id = ANY($1::text[])", old)
            await conn.execute("DELETE FROM tokenway_batches WHERE id = ANY($1::text[])", old)
            await conn.execute("DELETE FROM tokenway_jobs WHERE batch_id IS NULL AND finished_at < $1", before)
            open_rows = await conn.fetch("SELECT data FROM tokenway_batches WHERE NOT (status = ANY($1::text[]))",
                                         ended)
            in_use = [batch_from_data(r[0]).input_file_id for r in open_rows]
            deleted = await conn.fetch(
                "DELETE FROM tokenway_files WHERE created_at < $1 AND NOT (id = ANY($2::text[])) RETURNING id",
                before, in_use)
            return [r[0] for r in deleted]

    # Files.
    async def add_file(self, file: StoredFile) -> None:
        await self.pool.execute(
            f"INSERT INTO tokenway_files ({_FILE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)",
            file.id, file.owner, file.purpose, file.filename, file.bytes, file.created_at)

    async def get_file(self, file_id: str) -> StoredFile | None:
        row = await self.pool.fetchrow(f"SELECT {_FILE_COLUMNS} FROM tokenway_files WHERE id = $1", file_id)
        return StoredFile(*row) if row else None

    async def list_files(self, owner: str | None, purpose: str | None, limit: int, after: str | None
                         ) -> list[StoredFile]:
        where, args = _filters({"owner": owner, "purpose": purpose}, "tokenway_files", after)
        rows = await self.pool.fetch(
            f"SELECT {_FILE_COLUMNS} FROM tokenway_files WHERE {' AND '.join(where) or 'true'} "
            f"ORDER BY seq DESC LIMIT ${len(args) + 1}", *args, limit)
        return [StoredFile(*r) for r in rows]

    async def delete_file(self, file_id: str) -> None:
        await self.pool.execute("DELETE FROM tokenway_files WHERE id = $1", file_id)

    # Batches.
    async def add_batch(self, batch: Batch) -> None:
        await self.pool.execute("INSERT INTO tokenway_batches (id, owner, status, data) VALUES ($1, $2, $3, $4)",
                                batch.id, batch.owner, batch.status, batch_data(batch))

    async def get_batch(self, batch_id: str) -> Batch | None:
        data = await self.pool.fetchval("SELECT data FROM tokenway_batches WHERE id = $1", batch_id)
        return batch_from_data(data) if data is not None else None

    async def list_batches(self, owner: str | None, limit: int, after: str | None) -> list[Batch]:
        where, args = _filters({"owner": owner}, "tokenway_batches", after)
        rows = await self.pool.fetch(
            f"SELECT data FROM tokenway_batches WHERE {' AND '.join(where) or 'true'} "
            f"ORDER BY seq DESC LIMIT ${len(args) + 1}", *args, limit)
        return [batch_from_data(r[0]) for r in rows]

    async def batches_in(self, statuses: tuple[BatchStatus, ...]) -> list[Batch]:
        rows = await self.pool.fetch(
            "SELECT data FROM tokenway_batches WHERE status = ANY($1::text[]) ORDER BY seq", list(statuses))
        return [batch_from_data(r[0]) for r in rows]

    async def update_batch(self, batch_id: str, expect: tuple[BatchStatus, ...], change: Callable[[Batch], bool | None]
                           ) -> Batch | None:
        async with self.pool.acquire() as conn, conn.transaction():
            data = await conn.fetchval("SELECT data FROM tokenway_batches WHERE id = $1 FOR UPDATE", batch_id)
            if data is None:
                return None
            batch = batch_from_data(data)
            if batch.status not in expect:
                return None
            if change(batch) is False:
                return None
            await conn.execute("UPDATE tokenway_batches SET status = $1, data = $2 WHERE id = $3",
                               batch.status, batch_data(batch), batch_id)
            return batch


def _filters(equal: dict[str, str | None], table: str, after: str | None) -> tuple[list[str], list[object]]:
    """``column = $n`` for each value given, and the page cursor (rows older than ``after``)."""
    where: list[str] = []
    args: list[object] = []
    for column, value in equal.items():
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    if after is not None:
        args.append(after)
        where.append(f"seq < coalesce((SELECT seq FROM {table} WHERE id = ${len(args)}), 0)")
    return where, args
