"""A small asyncpg pool that makes its own tables at start: what a store with a few rare writes needs
(prompt versions, recorded requests), beside the key table's and the job store's bigger pools."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg


class SmallPostgresStore:
    def __init__(self, dsn: str, schema: str) -> None:
        self._dsn = dsn
        self._schema = schema  # CREATE ... IF NOT EXISTS statements, run once at start
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, f"{type(self).__name__}.start() was not awaited"
        return self._pool

    async def start(self) -> None:
        import asyncpg

        self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=2, command_timeout=10, timeout=5)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(7426115)")  # processes starting together
            await conn.execute(self._schema)

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
