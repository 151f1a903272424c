"""Helpers for the keys/limits/budget/usage tests: gateways with their own stores, real processes."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.fakes import FakeUpstream
from tests.servers import free_port, running_app, wait_until_ready
from tokenway.app import Gateway

MASTER = "sk-master-test"
PG = "postgresql://127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
MESSAGES = [{"role": "user", "content": "hi"}]
# Price 1.00/2.00 per 1M: the fake's 7 prompt + 6 completion tokens cost 19,000 nano-dollars, and a
# "hi" with max_tokens 6 reserves 8 (estimated) prompt + 6 = 20,000 nano-dollars.
SERVED_COST = 19_000
RESERVED_COST = 20_000
def config(upstream: FakeUpstream, access: str = "", scenario: str = "ok") -> str:
    block = "".join(f"  {line}\n" for line in access.strip("\n").splitlines()) if access.strip() else ""
    return f"""
models:
  - name: m
    deployments:
      - provider: openai
        api_base: {upstream.url(scenario)}
        price: {{input_per_1m: 1.0, output_per_1m: 2.0}}
  - name: other
    deployments:
      - provider: openai
        api_base: {upstream.url(scenario)}
access:
  keys_refresh_s: 0.2
  ledger_flush_s: 0.2
  redis_prefix: "tw-test-{secrets.token_hex(4)}:"
{block}"""


@contextmanager
def gateway(
    config_yaml: str, tmp: Path, master_key: str | None = MASTER, **settings: Any
) -> Iterator[tuple[str, Gateway]]:
    """A real uvicorn server in a thread; yields its base URL and the app."""
    with running_app(config_yaml, master_key=master_key, data_dir=tmp, **settings) as served:
        yield served


@contextmanager
def gateway_process(
    config_path: Path, data_dir: Path, output: Path | None = None, log_level: str = "warning", **env: str
) -> Iterator[str]:
    """``tokenway serve`` in its own process (its own event loop, key cache and counters). ``output``: a
    file that gets everything it writes (stdout and stderr), complete once the block is left."""
    port = free_port()
    environment = {
        **os.environ, "TOKENWAY_MASTER_KEY": MASTER, "TOKENWAY_DATA_DIR": str(data_dir),
        "TOKENWAY_DRAIN_DELAY_S": "0", **env,
    }
    with open(output or os.devnull, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tokenway", "serve", "--config", str(config_path), "--port", str(port),
             "--log-level", log_level],
            env=environment, stdout=out, stderr=out if output else subprocess.PIPE,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(base, 60, lambda: proc.poll() is None)
            yield base
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def create_key(base: str, **fields: Any) -> dict[str, Any]:
    r = httpx.post(base + "/admin/keys", json=fields, headers={"Authorization": f"Bearer {MASTER}"})
    assert r.status_code == 200, r.text
    return r.json()


def chat(base: str, key: str, model: str = "m", **body: Any) -> httpx.Response:
    return httpx.post(base + "/v1/chat/completions", json={"model": model, "messages": MESSAGES, **body},
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)


def pg_schema() -> str:
    """A fresh Postgres schema for one test (other engineers share the ``test`` database)."""
    import asyncio

    import asyncpg

    name = "tw_test_" + secrets.token_hex(4)

    async def make() -> None:
        conn = await asyncpg.connect(PG)
        await conn.execute(f"CREATE SCHEMA {name}")
        await conn.close()

    asyncio.run(make())
    return name


def pg_url(schema: str) -> str:
    return f"{PG}?search_path={schema}"


def drop_schema(schema: str) -> None:
    import asyncio

    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(PG)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()

    asyncio.run(drop())
