"""Keys and the usage ledger in one SQLite file: the embedded default.

The stdlib driver runs on one dedicated thread (SQLite connections are not shared across
threads), so the event loop never blocks on disk. None of this is on the request path: keys
are served from the in-process cache, usage is written in batches by the ledger.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from tokenway.stores.base import (
    ANSWERED,
    USAGE_COLUMNS,
    GroupBy,
    KeyRecord,
    UsageRecord,
    UsageTraffic,
    paced_slices,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokenway_keys (
  id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, seq INTEGER NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS tokenway_keys_seq ON tokenway_keys (seq);
CREATE TABLE IF NOT EXISTS tokenway_usage (
  id TEXT PRIMARY KEY, request_id TEXT, ts REAL NOT NULL, key_id TEXT, team TEXT, model TEXT,
  deployment TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, cached_tokens INTEGER,
  cost_nanos INTEGER NOT NULL, latency_ms REAL, status INTEGER, partial INTEGER NOT NULL DEFAULT 0,
  job_id TEXT, batch_id TEXT);
CREATE INDEX IF NOT EXISTS tokenway_usage_key_ts ON tokenway_usage (key_id, ts);
CREATE INDEX IF NOT EXISTS tokenway_usage_team_ts ON tokenway_usage (team, ts);
CREATE INDEX IF NOT EXISTS tokenway_usage_ts ON tokenway_usage (ts);
"""


GROUP_SQL = {"key": "key_id", "team": "team", "model": "model", "day": "date(ts, 'unixepoch')"}


class SqliteFile:
    """One SQLite file served by one dedicated thread: a connection is not shared across threads, and
    the event loop never waits on disk. Each ``_run`` is one transaction."""

    def __init__(self, path: Path, thread_name: str) -> None:
        self._path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            assert self._db is not None, f"{type(self).__name__}.start() was not awaited"
            with self._db:  # one transaction per call
                return fn(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    async def _open(self, prepare: Callable[[sqlite3.Connection], None]) -> None:
        def open_db() -> None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, check_same_thread=False, timeout=10.0)
            db.execute("PRAGMA journal_mode=WAL")  # readers in other processes (the CLI) never block us
            # With WAL, NORMAL loses nothing when the process is killed (only on power loss), at a
            # fraction of FULL's fsyncs: a job accepted with a 202 survives a kill -9.
            db.execute("PRAGMA synchronous=NORMAL")
            # Statement journals (every statement after the first in a transaction, as the ledger's
            # slices are) stay in memory: as temporary files they cost 4x the writes of the data.
            db.execute("PRAGMA temp_store=MEMORY")
            prepare(db)
            self._db = db

        await asyncio.get_running_loop().run_in_executor(self._thread, open_db)

    async def aclose(self) -> None:
        if self._db is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._db.close)
            self._db = None
        self._thread.shutdown(wait=False)


class SqliteDatabase(SqliteFile):
    def __init__(self, path: Path) -> None:
        super().__init__(path, "tokenway-sqlite")

    async def start(self) -> None:
        def prepare(db: sqlite3.Connection) -> None:
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(tokenway_usage)")}
            if "partial" not in columns:  # a ledger made before streams cut short were marked
                db.execute("ALTER TABLE tokenway_usage ADD COLUMN partial INTEGER NOT NULL DEFAULT 0")
            for column in ("job_id", "batch_id"):  # a ledger made before jobs
                if column not in columns:
                    db.execute(f"ALTER TABLE tokenway_usage ADD COLUMN {column} TEXT")

        await self._open(prepare)

    async def put_key(self, record: KeyRecord) -> None:
        # The change number is computed inside the one INSERT, under SQLite's write lock, so two
        # writers (a gateway and the CLI) can never hand out the same number.
        sql = (
            "INSERT INTO tokenway_keys (id, hash, seq, data) "
            "VALUES (?, ?, (SELECT coalesce(max(seq), 0) + 1 FROM tokenway_keys), ?) "
            "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, data = excluded.data"
        )
        args = (record.id, record.hash, record.model_dump_json())
        await self._run(lambda db: db.execute(sql, args))

    async def get_key(self, key_id: str) -> KeyRecord | None:
        sql = "SELECT data FROM tokenway_keys WHERE id = ?"
        row = await self._run(lambda db: db.execute(sql, (key_id,)).fetchone())
        return KeyRecord.model_validate_json(row[0]) if row else None

    async def list_keys(self) -> list[KeyRecord]:
        rows = await self._run(lambda db: db.execute("SELECT data FROM tokenway_keys ORDER BY seq").fetchall())
        return [KeyRecord.model_validate_json(r[0]) for r in rows]

    async def keys_changed_since(self, seq: int) -> tuple[list[KeyRecord], int]:
        def changed(db: sqlite3.Connection) -> tuple[list[Any], int]:
            rows = db.execute("SELECT data, seq FROM tokenway_keys WHERE seq > ? ORDER BY seq", (seq,)).fetchall()
            return rows, max((r[1] for r in rows), default=seq)

        rows, newest = await self._run(changed)
        return [KeyRecord.model_validate_json(r[0]) for r in rows], newest

    async def insert_usage(self, records: list[UsageRecord]) -> None:
        # Many rows per statement, not executemany: the driver releases and retakes the GIL around
        # every statement, and one per row made this thread slow the event loop down measurably.
        # But not the whole batch in one either: ``paced_slices`` says why.
        row_marks = "(" + ", ".join("?" * len(USAGE_COLUMNS)) + ")"
        columns = ", ".join(USAGE_COLUMNS)
        slices, pause = paced_slices(records)

        def insert(db: sqlite3.Connection) -> None:
            for i, rows in enumerate(slices):
                if i and pause:
                    time.sleep(pause)
                values = ", ".join([row_marks] * len(rows))
                params = [value for record in rows for value in record.row()]
                sql = f"INSERT INTO tokenway_usage ({columns}) VALUES {values} ON CONFLICT (id) DO NOTHING"
                db.execute(sql, params)

        await self._run(insert)

    async def usage_summary(
        self, group_by: GroupBy, since: float, until: float, key_id: str | None = None, team: str | None = None
    ) -> list[dict[str, Any]]:
        group = GROUP_SQL[group_by]
        args: list[float | str]
        where, args = "ts >= ? AND ts < ?", [since, until]
        if key_id is not None:
            where, args = where + " AND key_id = ?", [*args, key_id]
        if team is not None:
            where, args = where + " AND team = ?", [*args, team]
        sql = (
            f"SELECT {group}, count(*), sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens), "
            f"sum(cost_nanos) FROM tokenway_usage WHERE {where} GROUP BY 1 ORDER BY 1"
        )
        rows = await self._run(lambda db: db.execute(sql, args).fetchall())
        return [summary_row(group_by, row) for row in rows]

    async def usage_traffic(self, since: float, until: float) -> UsageTraffic:
        where = ANSWERED.format(since="?", until="?")

        def read(db: sqlite3.Connection) -> UsageTraffic:
            def rows(select: str) -> list[tuple[int, int]]:
                found = db.execute(f"SELECT {select} FROM tokenway_usage WHERE {where} GROUP BY 1", (since, until))
                return [(int(a), int(b)) for a, b in found.fetchall()]

            count, first = db.execute(f"SELECT count(*), min(ts) FROM tokenway_usage WHERE {where}",
                                      (since, until)).fetchone()
            minutes = rows("CAST(ts / 60 AS INTEGER), count(*)")
            return UsageTraffic(int(count), first, max((n for _, n in minutes), default=0),
                                rows("prompt_tokens, count(*)"), rows("completion_tokens, count(*)"))

        return await self._run(read)

    async def spent(self, since: float, key_id: str | None = None, team: str | None = None) -> int:
        column, value = ("key_id", key_id) if key_id is not None else ("team", team)
        sql = f"SELECT coalesce(sum(cost_nanos), 0) FROM tokenway_usage WHERE {column} = ? AND ts >= ?"
        row = await self._run(lambda db: db.execute(sql, (value, since)).fetchone())
        return int(row[0])


def summary_row(group_by: str, row: Any) -> dict[str, Any]:
    """One group of a usage summary, the same shape from SQLite and Postgres."""
    cost = int(row[5] or 0)
    return {
        group_by: row[0], "requests": int(row[1]), "prompt_tokens": int(row[2] or 0),
        "completion_tokens": int(row[3] or 0), "cached_tokens": int(row[4] or 0),
        "cost_usd": cost / 1e9, "cost_nanos": cost,
    }
