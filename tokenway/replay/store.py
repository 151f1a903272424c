"""Recorded requests in SQLite (the data directory's ``tokenway.db``) or Postgres (a fleet), chosen
from the settings as the key table is. Each write also enforces the bounds: rows older than the
retention go, and past the row cap the oldest go."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Protocol

import orjson

from tokenway.config import Settings
from tokenway.stores.small_pg import SmallPostgresStore
from tokenway.stores.sqlite import SqliteFile

# (request_id, ts, model, status, the document as JSON)
Row = tuple[str, float, str | None, int, str]

_CREATE = (
    "CREATE TABLE IF NOT EXISTS tokenway_recorded_requests ({seq} PRIMARY KEY, request_id TEXT NOT NULL, "
    "ts {real} NOT NULL, model TEXT, status INTEGER NOT NULL, data TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS tokenway_recorded_requests_id ON tokenway_recorded_requests (request_id);"
    "CREATE INDEX IF NOT EXISTS tokenway_recorded_requests_ts ON tokenway_recorded_requests (ts);"
)
_INSERT = "INSERT INTO tokenway_recorded_requests (request_id, ts, model, status, data) VALUES ({marks})"
# A row cap kept by sequence number: the newest ``keep`` numbers stay (gaps only make it keep fewer).
_PRUNE = ("DELETE FROM tokenway_recorded_requests WHERE ts < {before} OR seq <= "
          "(SELECT coalesce(max(seq), 0) FROM tokenway_recorded_requests) - {keep}")
_GET = "SELECT data FROM tokenway_recorded_requests WHERE request_id = {mark} ORDER BY seq DESC LIMIT 1"


class RecordStore(Protocol):
    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def write(self, rows: list[Row], before: float, keep: int) -> None:
        """Insert ``rows``, then delete rows older than ``before`` and all but the newest ``keep``."""

    async def get(self, request_id: str) -> dict[str, Any] | None:
        """The newest record of ``request_id`` (clients may reuse request ids)."""

    async def count(self) -> int: ...


def open_record_store(settings: Settings) -> RecordStore:
    if settings.database_url:
        return PostgresRecordStore(settings.database_url)
    return SqliteRecordStore(settings.data_dir / "tokenway.db")


class SqliteRecordStore(SqliteFile):
    def __init__(self, path: Path) -> None:
        super().__init__(path, "tokenway-records")

    async def start(self) -> None:
        def prepare(db: sqlite3.Connection) -> None:
            db.executescript(_CREATE.format(seq="seq INTEGER", real="REAL"))

        await self._open(prepare)

    async def write(self, rows: list[Row], before: float, keep: int) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.executemany(_INSERT.format(marks="?, ?, ?, ?, ?"), rows)
            db.execute(_PRUNE.format(before="?", keep="?"), (before, keep))

        await self._run(write)

    async def get(self, request_id: str) -> dict[str, Any] | None:
        row = await self._run(lambda db: db.execute(_GET.format(mark="?"), (request_id,)).fetchone())
        return orjson.loads(row[0]) if row else None

    async def count(self) -> int:
        row = await self._run(lambda db: db.execute("SELECT count(*) FROM tokenway_recorded_requests").fetchone())
        return int(row[0])


class PostgresRecordStore(SmallPostgresStore):
    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, _CREATE.format(seq="seq BIGSERIAL", real="DOUBLE PRECISION"))

    async def write(self, rows: list[Row], before: float, keep: int) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(_INSERT.format(marks="$1, $2, $3, $4, $5"), rows)
            await conn.execute(_PRUNE.format(before="$1", keep="$2"), before, keep)

    async def get(self, request_id: str) -> dict[str, Any] | None:
        data = await self.pool.fetchval(_GET.format(mark="$1"), request_id)
        return orjson.loads(data) if data else None

    async def count(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM tokenway_recorded_requests"))
