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
def served(config_yaml: str, tmp: Path, store: str) -> Iterator[str]:
    """A gateway on ``config_yaml`` keeping its tables in SQLite under ``tmp`` or in a fresh Postgres schema."""
    schema = pg_schema() if store == "postgres" else None
    extra: dict[str, Any] = {"database_url": pg_url(schema)} if schema else {}
    try:
        with gateway(config_yaml, tmp, **extra) as (base, _):
            yield base
    finally:
        if schema:
            drop_schema(schema)


def admin(method: str, base: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, base + path, headers=ADMIN, timeout=10, **kwargs)


def client(base: str, key: str = MASTER) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
