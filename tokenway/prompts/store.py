"""The prompt events table: SQLite in the data directory's ``tokenway.db`` (one box) or Postgres
(a fleet), chosen from the settings as the key table is (``tokenway.access.open_database``).

Events are only ever appended. A new version's number is computed inside the insert, under the
database's write lock (SQLite's, or an advisory lock in Postgres that also makes event numbers
commit in order, so a poller that has seen number N never misses an N-1 committed later).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Protocol

import orjson

from tokenway.config import Settings
from tokenway.prompts.book import Action, PromptEvent
from tokenway.prompts.templates import PromptTemplate
from tokenway.stores.small_pg import SmallPostgresStore
from tokenway.stores.sqlite import SqliteFile

_COLUMNS = "seq, prompt_id, version, action, data, ts"
_CREATE = (
    "CREATE TABLE IF NOT EXISTS tokenway_prompt_events ({seq} PRIMARY KEY {autoincrement}, prompt_id TEXT NOT NULL, "
    "version INTEGER NOT NULL, action TEXT NOT NULL, data TEXT, ts {real} NOT NULL);"
    "CREATE INDEX IF NOT EXISTS tokenway_prompt_events_id ON tokenway_prompt_events (prompt_id, action);"
)
_NEXT_VERSION = ("(SELECT coalesce(max(version), 0) + 1 FROM tokenway_prompt_events "
                 "WHERE prompt_id = {mark} AND action = 'create')")


class PromptStore(Protocol):
    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def create(self, prompt_id: str, template: PromptTemplate) -> int:
        """Append a new version of ``prompt_id``; its number (1 for a new prompt)."""

    async def append(self, prompt_id: str, version: int, action: Action) -> None:
        """Append an activation or a rollback."""

    async def events_since(self, seq: int) -> list[PromptEvent]:
        """Events numbered above ``seq``, in order."""


def open_prompt_store(settings: Settings) -> PromptStore:
    if settings.database_url:
        return PostgresPromptStore(settings.database_url)
    return SqlitePromptStore(settings.data_dir / "tokenway.db")


def _data(template: PromptTemplate) -> str:
    return orjson.dumps(template.model_dump(exclude_none=True)).decode()


class SqlitePromptStore(SqliteFile):
    def __init__(self, path: Path) -> None:
        super().__init__(path, "tokenway-prompts")

    async def start(self) -> None:
        def prepare(db: sqlite3.Connection) -> None:
            # AUTOINCREMENT: event numbers are never reused, so a poller's "events after N" stays right
            db.executescript(_CREATE.format(seq="seq INTEGER", real="REAL", autoincrement="AUTOINCREMENT"))

        await self._open(prepare)

    async def create(self, prompt_id: str, template: PromptTemplate) -> int:
        sql = ("INSERT INTO tokenway_prompt_events (prompt_id, version, action, data, ts) "
               f"VALUES (?, {_NEXT_VERSION.format(mark='?')}, 'create', ?, ?) RETURNING version")
        args = (prompt_id, prompt_id, _data(template), time.time())
        row = await self._run(lambda db: db.execute(sql, args).fetchone())
        return int(row[0])

    async def append(self, prompt_id: str, version: int, action: Action) -> None:
        sql = "INSERT INTO tokenway_prompt_events (prompt_id, version, action, ts) VALUES (?, ?, ?, ?)"
        args = (prompt_id, version, action, time.time())
        await self._run(lambda db: db.execute(sql, args))

    async def events_since(self, seq: int) -> list[PromptEvent]:
        sql = f"SELECT {_COLUMNS} FROM tokenway_prompt_events WHERE seq > ? ORDER BY seq"
        rows = await self._run(lambda db: db.execute(sql, (seq,)).fetchall())
        return [PromptEvent(*row) for row in rows]


class PostgresPromptStore(SmallPostgresStore):
    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, _CREATE.format(seq="seq BIGSERIAL", real="DOUBLE PRECISION", autoincrement=""))

    async def create(self, prompt_id: str, template: PromptTemplate) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(7426117)")
            version = await conn.fetchval(
                "INSERT INTO tokenway_prompt_events (prompt_id, version, action, data, ts) "
                f"VALUES ($1, {_NEXT_VERSION.format(mark='$1')}, 'create', $2, $3) RETURNING version",
                prompt_id, _data(template), time.time())
        return int(version)

    async def append(self, prompt_id: str, version: int, action: Action) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(7426117)")
            await conn.execute("INSERT INTO tokenway_prompt_events (prompt_id, version, action, ts) "
                               "VALUES ($1, $2, $3, $4)", prompt_id, version, action, time.time())

    async def events_since(self, seq: int) -> list[PromptEvent]:
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM tokenway_prompt_events WHERE seq > $1 ORDER BY seq", seq)
        return [PromptEvent(*row) for row in rows]
