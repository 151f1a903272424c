"""The job store in ``<data_dir>/jobs.db`` (SQLite): the embedded default, no other service.

Like the key table, on a thread of its own, one transaction per method. A separate file from the
ledger's, so a 10,000-line batch being written never holds up usage rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from tokenway.jobs.records import Batch, BatchStatus, Job, JobStatus, StoredFile
from tokenway.jobs.store import JOB_COLUMNS, batch_data, batch_from_data, job_from_row, job_row
from tokenway.stores.sqlite import SqliteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokenway_jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, owner TEXT NOT NULL, kind TEXT NOT NULL,
  body BLOB NOT NULL, created_at REAL NOT NULL, status TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0,
  batch_id TEXT, line INTEGER, custom_id TEXT, idempotency_key TEXT, body_hash TEXT, webhook_url TEXT,
  attempts INTEGER NOT NULL DEFAULT 0, run_token TEXT, lease_until REAL, started_at REAL, finished_at REAL,
  status_code INTEGER, result BLOB, request_id TEXT, webhook_state TEXT);
CREATE INDEX IF NOT EXISTS tokenway_jobs_queue ON tokenway_jobs (status, owner, priority DESC, seq);
CREATE INDEX IF NOT EXISTS tokenway_jobs_owner ON tokenway_jobs (owner, seq);
CREATE INDEX IF NOT EXISTS tokenway_jobs_batch ON tokenway_jobs (batch_id, status, line);
CREATE UNIQUE INDEX IF NOT EXISTS tokenway_jobs_idempotency ON tokenway_jobs (owner, idempotency_key)
  WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS tokenway_files (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, owner TEXT NOT NULL, purpose TEXT NOT NULL,
  filename TEXT NOT NULL, bytes INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tokenway_batches (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, owner TEXT NOT NULL, status TEXT NOT NULL,
  data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS tokenway_batches_status ON tokenway_batches (status);
"""

_SELECT_JOB = f"SELECT {', '.join(JOB_COLUMNS)} FROM tokenway_jobs"
_FILE_COLUMNS = "id, owner, purpose, filename, bytes, created_at"
# A claim: a fresh run token and lease, one more attempt (parameters: token, lease_until, now).
_CLAIM = ("UPDATE tokenway_jobs SET status = 'running', run_token = ?, lease_until = ?, attempts = attempts + 1, "
          "started_at = coalesce(started_at, ?)")


class SqliteJobStore(SqliteFile):
    def __init__(self, path: Path) -> None:
        super().__init__(path, "tokenway-jobs")

    async def start(self) -> None:
        def prepare(db: sqlite3.Connection) -> None:
            db.executescript(_SCHEMA)

        await self._open(prepare)

    # Jobs.
    async def add_job(self, job: Job) -> tuple[Job, bool]:
        marks = ", ".join("?" * len(JOB_COLUMNS))

        def add(db: sqlite3.Connection) -> tuple[Job, bool]:
            if job.idempotency_key is not None:
                row = db.execute(f"{_SELECT_JOB} WHERE owner = ? AND idempotency_key = ?",
                                 (job.owner, job.idempotency_key)).fetchone()
                if row is not None:
                    return job_from_row(row), False
            try:
                db.execute(f"INSERT INTO tokenway_jobs ({', '.join(JOB_COLUMNS)}) VALUES ({marks})", job_row(job))
            except sqlite3.IntegrityError:  # the same key, submitted at the same moment by another process
                row = db.execute(f"{_SELECT_JOB} WHERE owner = ? AND idempotency_key = ?",
                                 (job.owner, job.idempotency_key)).fetchone()
                if row is None:
                    raise
                return job_from_row(row), False
            return job, True

        return await self._run(add)

    async def add_jobs(self, jobs: list[Job]) -> None:
        marks = ", ".join("?" * len(JOB_COLUMNS))
        sql = f"INSERT INTO tokenway_jobs ({', '.join(JOB_COLUMNS)}) VALUES ({marks})"
        rows = [job_row(job) for job in jobs]
        await self._run(lambda db: db.executemany(sql, rows))

    async def get_job(self, job_id: str) -> Job | None:
        row = await self._run(lambda db: db.execute(f"{_SELECT_JOB} WHERE id = ?", (job_id,)).fetchone())
        return job_from_row(row) if row else None

    async def find_job(self, owner: str, idempotency_key: str) -> Job | None:
        sql = f"{_SELECT_JOB} WHERE owner = ? AND idempotency_key = ?"
        row = await self._run(lambda db: db.execute(sql, (owner, idempotency_key)).fetchone())
        return job_from_row(row) if row else None

    async def list_jobs(self, owner: str | None, status: str | None, limit: int, after: str | None) -> list[Job]:
        where, args = _filters({"owner": owner, "status": status}, "tokenway_jobs", after)
        where.append("batch_id IS NULL")
        sql = f"{_SELECT_JOB} WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?"
        rows = await self._run(lambda db: db.execute(sql, (*args, limit)).fetchall())
        return [job_from_row(r) for r in rows]

    async def queued_counts(self, owner: str) -> tuple[int, int]:
        def count(db: sqlite3.Connection) -> tuple[int, int]:
            total = db.execute("SELECT count(*) FROM tokenway_jobs WHERE status = 'queued'").fetchone()[0]
            mine = db.execute("SELECT count(*) FROM tokenway_jobs WHERE status = 'queued' AND owner = ?",
                              (owner,)).fetchone()[0]
            return int(total), int(mine)

        return await self._run(count)

    async def queued_owners(self) -> list[str]:
        rows = await self._run(
            lambda db: db.execute("SELECT DISTINCT owner FROM tokenway_jobs WHERE status = 'queued'").fetchall())
        return [r[0] for r in rows]

    async def claim(self, owner: str, limit: int, token: str, lease_until: float, now: float) -> list[Job]:
        sql = (f"{_CLAIM} WHERE id IN (SELECT id FROM tokenway_jobs WHERE status = 'queued' AND owner = ? "
               f"ORDER BY priority DESC, seq LIMIT ?) RETURNING {', '.join(JOB_COLUMNS)}")
        rows = await self._run(lambda db: db.execute(sql, (token, lease_until, now, owner, limit)).fetchall())
        return sorted((job_from_row(r) for r in rows), key=lambda j: (-j.priority, j.created_at))

    async def claim_job(self, job_id: str, token: str, lease_until: float, now: float) -> Job | None:
        sql = (f"{_CLAIM} WHERE id = ? AND (status = 'queued' OR (status = 'running' AND lease_until < ?)) "
               f"RETURNING {', '.join(JOB_COLUMNS)}")
        row = await self._run(lambda db: db.execute(sql, (token, lease_until, now, job_id, now)).fetchone())
        return job_from_row(row) if row else None

    async def renew(self, tokens: list[str], lease_until: float) -> set[str]:
        if not tokens:
            return set()
        marks = ", ".join("?" * len(tokens))
        sql = (f"UPDATE tokenway_jobs SET lease_until = ? WHERE status = 'running' AND run_token IN ({marks}) "
               "RETURNING id")
        rows = await self._run(lambda db: db.execute(sql, (lease_until, *tokens)).fetchall())
        return {r[0] for r in rows}

    async def finish(self, jobs: list[Job]) -> list[bool]:
        sql = (
            "UPDATE tokenway_jobs SET status = ?, attempts = ?, finished_at = ?, status_code = ?, result = ?, "
            "request_id = ?, webhook_state = ?, lease_until = NULL WHERE id = ? AND run_token = ? "
            "AND status = 'running'"
        )
        rows = [(job.status, job.attempts, job.finished_at, job.status_code, job.result, job.request_id,
                 job.webhook_state, job.id, job.run_token) for job in jobs]
        return await self._run(lambda db: [db.execute(sql, row).rowcount == 1 for row in rows])

    async def pending_webhooks(self, finished_before: float, limit: int) -> list[Job]:
        sql = f"{_SELECT_JOB} WHERE webhook_state = 'pending' AND finished_at < ? LIMIT ?"
        rows = await self._run(lambda db: db.execute(sql, (finished_before, limit)).fetchall())
        return [job_from_row(r) for r in rows]

    async def set_webhook_state(self, job_id: str, state: str) -> None:
        sql = "UPDATE tokenway_jobs SET webhook_state = ? WHERE id = ?"
        await self._run(lambda db: db.execute(sql, (state, job_id)))

    async def release(self, job: Job) -> None:
        sql = ("UPDATE tokenway_jobs SET status = 'queued', lease_until = NULL, attempts = ? "
               "WHERE id = ? AND run_token = ? AND status = 'running'")
        await self._run(lambda db: db.execute(sql, (job.attempts, job.id, job.run_token)))

    async def cancel_job(self, job_id: str, now: float, status: JobStatus = "cancelled") -> Job | None:
        sql = ("UPDATE tokenway_jobs SET status = ?, finished_at = ?, lease_until = NULL, "
               "webhook_state = CASE WHEN webhook_url IS NULL THEN NULL ELSE 'pending' END "
               "WHERE id = ? AND status IN ('queued', 'running') "
               f"RETURNING {', '.join(JOB_COLUMNS)}")
        row = await self._run(lambda db: db.execute(sql, (status, now, job_id)).fetchone())
        return job_from_row(row) if row else None

    async def requeue_expired(self, now: float) -> int:
        sql = "UPDATE tokenway_jobs SET status = 'queued' WHERE status = 'running' AND lease_until < ?"
        return await self._run(lambda db: db.execute(sql, (now,)).rowcount)

    async def fail_queued(self, batch_id: str, status: JobStatus, status_code: int | None, result: bytes | None,
                          now: float) -> int:
        sql = ("UPDATE tokenway_jobs SET status = ?, status_code = ?, result = ?, finished_at = ? "
               "WHERE batch_id = ? AND status = 'queued'")
        return await self._run(lambda db: db.execute(sql, (status, status_code, result, now, batch_id)).rowcount)

    async def status_counts(self) -> tuple[dict[str, int], float | None]:
        def counts(db: sqlite3.Connection) -> tuple[dict[str, int], float | None]:
            rows = db.execute("SELECT status, count(*) FROM tokenway_jobs GROUP BY status").fetchall()
            oldest = db.execute("SELECT min(created_at) FROM tokenway_jobs WHERE status = 'queued'").fetchone()[0]
            return {r[0]: int(r[1]) for r in rows}, oldest

        return await self._run(counts)

    async def batch_counts(self, batch_id: str) -> dict[str, int]:
        sql = "SELECT status, count(*) FROM tokenway_jobs WHERE batch_id = ? GROUP BY status"
        rows = await self._run(lambda db: db.execute(sql, (batch_id,)).fetchall())
        return {r[0]: int(r[1]) for r in rows}

    async def batch_open(self, batch_id: str) -> bool:
        sql = "SELECT 1 FROM tokenway_jobs WHERE batch_id = ? AND status IN ('queued', 'running') LIMIT 1"
        return await self._run(lambda db: db.execute(sql, (batch_id,)).fetchone() is not None)

    async def running_lines(self, batch_id: str) -> list[str]:
        sql = "SELECT id FROM tokenway_jobs WHERE batch_id = ? AND status = 'running'"
        return [r[0] for r in await self._run(lambda db: db.execute(sql, (batch_id,)).fetchall())]

    async def batch_last_line(self, batch_id: str) -> int:
        sql = "SELECT coalesce(max(line), 0) FROM tokenway_jobs WHERE batch_id = ?"
        return int(await self._run(lambda db: db.execute(sql, (batch_id,)).fetchone()[0]))

    async def batch_lines(self, batch_id: str, after_line: int, limit: int) -> list[Job]:
        sql = f"{_SELECT_JOB} WHERE batch_id = ? AND line > ? ORDER BY line LIMIT ?"
        rows = await self._run(lambda db: db.execute(sql, (batch_id, after_line, limit)).fetchall())
        return [job_from_row(r) for r in rows]

    async def purge(self, before: float) -> list[str]:
        ended = "('completed', 'failed', 'expired', 'cancelled')"

        def purge(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(f"SELECT data FROM tokenway_batches WHERE status IN {ended}").fetchall()
            old = [b for b in (batch_from_data(r[0]) for r in rows)
                   if max(b.times.values(), default=b.created_at) < before]
            for batch in old:
                db.execute("DELETE FROM tokenway_jobs WHERE batch_id = ?", (batch.id,))
                db.execute("DELETE FROM tokenway_batches WHERE id = ?", (batch.id,))
            db.execute("DELETE FROM tokenway_jobs WHERE batch_id IS NULL AND finished_at < ?", (before,))
            in_use = {b.input_file_id for b in map(batch_from_data, (r[0] for r in db.execute(
                f"SELECT data FROM tokenway_batches WHERE status NOT IN {ended}").fetchall()))}
            files = [r[0] for r in db.execute("SELECT id FROM tokenway_files WHERE created_at < ?", (before,))
                     if r[0] not in in_use]
            db.executemany("DELETE FROM tokenway_files WHERE id = ?", [(f,) for f in files])
            return files

        return await self._run(purge)

    # Files.
    async def add_file(self, file: StoredFile) -> None:
        sql = f"INSERT INTO tokenway_files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
        args = (file.id, file.owner, file.purpose, file.filename, file.bytes, file.created_at)
        await self._run(lambda db: db.execute(sql, args))

    async def get_file(self, file_id: str) -> StoredFile | None:
        sql = f"SELECT {_FILE_COLUMNS} FROM tokenway_files WHERE id = ?"
        row = await self._run(lambda db: db.execute(sql, (file_id,)).fetchone())
        return StoredFile(*row) if row else None

    async def list_files(self, owner: str | None, purpose: str | None, limit: int, after: str | None
                         ) -> list[StoredFile]:
        where, args = _filters({"owner": owner, "purpose": purpose}, "tokenway_files", after)
        sql = f"SELECT {_FILE_COLUMNS} FROM tokenway_files WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?"
        rows = await self._run(lambda db: db.execute(sql, (*args, limit)).fetchall())
        return [StoredFile(*r) for r in rows]

    async def delete_file(self, file_id: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM tokenway_files WHERE id = ?", (file_id,)))

    # Batches.
    async def add_batch(self, batch: Batch) -> None:
        sql = "INSERT INTO tokenway_batches (id, owner, status, data) VALUES (?, ?, ?, ?)"
        args = (batch.id, batch.owner, batch.status, batch_data(batch))
        await self._run(lambda db: db.execute(sql, args))

    async def get_batch(self, batch_id: str) -> Batch | None:
        row = await self._run(
            lambda db: db.execute("SELECT data FROM tokenway_batches WHERE id = ?", (batch_id,)).fetchone())
        return batch_from_data(row[0]) if row else None

    async def list_batches(self, owner: str | None, limit: int, after: str | None) -> list[Batch]:
        where, args = _filters({"owner": owner}, "tokenway_batches", after)
        sql = f"SELECT data FROM tokenway_batches WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?"
        rows = await self._run(lambda db: db.execute(sql, (*args, limit)).fetchall())
        return [batch_from_data(r[0]) for r in rows]

    async def batches_in(self, statuses: tuple[BatchStatus, ...]) -> list[Batch]:
        marks = ", ".join("?" * len(statuses))
        sql = f"SELECT data FROM tokenway_batches WHERE status IN ({marks}) ORDER BY seq"
        rows = await self._run(lambda db: db.execute(sql, statuses).fetchall())
        return [batch_from_data(r[0]) for r in rows]

    async def update_batch(self, batch_id: str, expect: tuple[BatchStatus, ...], change: Callable[[Batch], bool | None]
                           ) -> Batch | None:
        def update(db: sqlite3.Connection) -> Batch | None:
            db.execute("BEGIN IMMEDIATE")  # the read and the write in one transaction, also across processes
            row = db.execute("SELECT data FROM tokenway_batches WHERE id = ?", (batch_id,)).fetchone()
            if row is None:
                return None
            batch = batch_from_data(row[0])
            if batch.status not in expect:
                return None
            if change(batch) is False:
                return None
            db.execute("UPDATE tokenway_batches SET status = ?, data = ? WHERE id = ?",
                       (batch.status, batch_data(batch), batch_id))
            return batch

        return await self._run(update)


def _filters(equal: dict[str, str | None], table: str, after: str | None) -> tuple[list[str], list[object]]:
    """``column = ?`` for each value given, and the page cursor (rows older than ``after``)."""
    where = ["1 = 1", *(f"{column} = ?" for column, value in equal.items() if value is not None)]
    args: list[object] = [value for value in equal.values() if value is not None]
    if after is not None:
        where.append(f"seq < coalesce((SELECT seq FROM {table} WHERE id = ?), 0)")
        args.append(after)
    return where, args
