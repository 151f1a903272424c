"""What the prompt and replay tests share: a gateway on SQLite or on its own Postgres schema."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.access_support import MASTER, drop_schema, gateway, pg_schema, pg_url

ADMIN = {"Authorization": f"Bearer {MASTER}"}
STORES = [pytest.param("sqlite", id="sqlite"), pytest.param("postgres", id="postgres")]


@contextmanager
def served(config_yaml: str, tmp: Path, store: str, where: list[str] | None = None) -> Iterator[str]:
    """A gateway on ``config_yaml`` keeping its tables in SQLite under ``tmp`` or in a fresh Postgres schema
    (whose URL, or the SQLite file's path, is appended to ``where``)."""
    schema = pg_schema() if store == "postgres" else None
    extra: dict[str, Any] = {"database_url": pg_url(schema)} if schema else {}
    if where is not None:
        where.append(pg_url(schema) if schema else str(tmp / "tokenway.db"))
    try:
        with gateway(config_yaml, tmp, **extra) as (base, _):
            yield base
    finally:
        if schema:
            drop_schema(schema)


def rows(where: str, table: str) -> int:
    """How many rows ``table`` holds, read by a connection of its own (SQLite file or Postgres URL)."""
    if where.startswith("postgresql://"):
        import asyncio

        import asyncpg

        async def count() -> int:
            url, _, search = where.partition("?search_path=")
            conn = await asyncpg.connect(url, server_settings={"search_path": search})
            try:
                return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
            finally:
                await conn.close()

        return asyncio.run(count())
    import sqlite3

    with sqlite3.connect(where) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def admin(method: str, base: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, base + path, headers=ADMIN, timeout=10, **kwargs)


def client(base: str, key: str = MASTER) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
