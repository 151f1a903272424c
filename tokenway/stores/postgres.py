"""Keys and the usage ledger in Postgres (asyncpg), shared by every gateway process.

Key changes carry a number from one sequence; each process polls ``max(seq)`` (an index-only
read) twice a second and loads only the rows past what it has, so a revocation is seen by
every process within about half a second and no request ever waits on the database.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from tokenway.stores.base import (
    ANSWERED,
    USAGE_COLUMNS,
    GroupBy,
    KeyRecord,
    UsageRecord,
    UsageTraffic,
    paced_slices,
)
from tokenway.stores.sqlite import summary_row

_SCHEMA = """
CREATE SEQUENCE IF NOT EXISTS tokenway_keys_seq;
CREATE TABLE IF NOT EXISTS tokenway_keys (
  id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, seq BIGINT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS tokenway_keys_seq_idx ON tokenway_keys (seq);
CREATE TABLE IF NOT EXISTS tokenway_usage (
  id TEXT PRIMARY KEY, request_id TEXT, ts DOUBLE PRECISION NOT NULL, key_id TEXT, team TEXT, model TEXT,
  deployment TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, cached_tokens INTEGER,
  cost_nanos BIGINT NOT NULL, latency_ms REAL, status INTEGER, partial BOOLEAN NOT NULL DEFAULT false,
  job_id TEXT, batch_id TEXT);
ALTER TABLE tokenway_usage ADD COLUMN IF NOT EXISTS partial BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE tokenway_usage ADD COLUMN IF NOT EXISTS job_id TEXT;
ALTER TABLE tokenway_usage ADD COLUMN IF NOT EXISTS batch_id TEXT;
CREATE INDEX IF NOT EXISTS tokenway_usage_key_ts ON tokenway_usage (key_id, ts);
CREATE INDEX IF NOT EXISTS tokenway_usage_team_ts ON tokenway_usage (team, ts);
CREATE INDEX IF NOT EXISTS tokenway_usage_ts ON tokenway_usage (ts);
"""

_GROUP_SQL = {
    "key": "key_id", "team": "team", "model": "model",
    "day": "to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}


class PostgresDatabase:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "PostgresDatabase.start() was not awaited"
        return self._pool

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=4, command_timeout=10, timeout=5)
        async with self.pool.acquire() as conn:
            # Several processes may start together: serialise the CREATEs on an advisory lock.
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(7426115)")
                await conn.execute(_SCHEMA)

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def put_key(self, record: KeyRecord) -> None:
        # Writers take a lock so that change numbers commit in order: a poller that has seen
        # number N can never miss an N-1 committed after it. Key writes are rare; reads never wait.
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(7426116)")
            await conn.execute(
                "INSERT INTO tokenway_keys (id, hash, seq, data) VALUES ($1, $2, nextval('tokenway_keys_seq'), $3) "
                "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, data = excluded.data",
                record.id, record.hash, record.model_dump_json(),
            )

    async def get_key(self, key_id: str) -> KeyRecord | None:
        data = await self.pool.fetchval("SELECT data FROM tokenway_keys WHERE id = $1", key_id)
        return KeyRecord.model_validate_json(data) if data else None

    async def list_keys(self) -> list[KeyRecord]:
        rows = await self.pool.fetch("SELECT data FROM tokenway_keys ORDER BY seq")
        return [KeyRecord.model_validate_json(r[0]) for r in rows]

    async def keys_changed_since(self, seq: int) -> tuple[list[KeyRecord], int]:
        newest = await self.pool.fetchval("SELECT coalesce(max(seq), 0) FROM tokenway_keys")
        if newest <= seq:
            return [], seq
        rows = await self.pool.fetch("SELECT data, seq FROM tokenway_keys WHERE seq > $1 ORDER BY seq", seq)
        return [KeyRecord.model_validate_json(r[0]) for r in rows], max(int(r[1]) for r in rows)

    async def insert_usage(self, records: list[UsageRecord]) -> None:
        # In paced slices (``paced_slices`` says why): here the rows are encoded in the event loop
        # itself, and the pauses let it serve requests in between. One transaction, one commit.
        marks = ", ".join(f"${i + 1}" for i in range(len(USAGE_COLUMNS)))
        sql = f"INSERT INTO tokenway_usage ({', '.join(USAGE_COLUMNS)}) VALUES ({marks}) ON CONFLICT (id) DO NOTHING"
        slices, pause = paced_slices(records)
        async with self.pool.acquire() as conn, conn.transaction():
            for i, rows in enumerate(slices):
                if i and pause:
                    await asyncio.sleep(pause)
                await conn.executemany(sql, [r.row() for r in rows])

    async def usage_summary(
        self, group_by: GroupBy, since: float, until: float, key_id: str | None = None, team: str | None = None
    ) -> list[dict[str, Any]]:
        args: list[Any] = [since, until]
        where = "ts >= $1 AND ts < $2"
        if key_id is not None:
            args.append(key_id)
            where += f" AND key_id = ${len(args)}"
        if team is not None:
            args.append(team)
            where += f" AND team = ${len(args)}"
        rows = await self.pool.fetch(
            f"SELECT {_GROUP_SQL[group_by]}, count(*), sum(prompt_tokens), sum(completion_tokens), "
            f"sum(cached_tokens), sum(cost_nanos) FROM tokenway_usage WHERE {where} GROUP BY 1 ORDER BY 1",
            *args,
        )
        return [summary_row(group_by, tuple(row)) for row in rows]

    async def usage_traffic(self, since: float, until: float) -> UsageTraffic:
        where = ANSWERED.format(since="$1", until="$2")

        async def rows(select: str) -> list[tuple[int, int]]:
            found = await self.pool.fetch(f"SELECT {select} FROM tokenway_usage WHERE {where} GROUP BY 1", since, until)
            return [(int(row[0]), int(row[1])) for row in found]

        totals = await self.pool.fetchrow(f"SELECT count(*), min(ts) FROM tokenway_usage WHERE {where}", since, until)
        minutes = await rows("floor(ts / 60)::bigint, count(*)")
        return UsageTraffic(int(totals[0]), totals[1], max((n for _, n in minutes), default=0),
                            await rows("prompt_tokens, count(*)"), await rows("completion_tokens, count(*)"))

    async def spent(self, since: float, key_id: str | None = None, team: str | None = None) -> int:
        column, value = ("key_id", key_id) if key_id is not None else ("team", team)
        total = await self.pool.fetchval(
            f"SELECT coalesce(sum(cost_nanos), 0) FROM tokenway_usage WHERE {column} = $1 AND ts >= $2", value, since
        )
        return int(total)
