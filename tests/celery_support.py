"""Helpers for the Celery tests: a slow scripted upstream, ``tokenway worker`` processes, a fleet's env."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from tests.access_support import PG
from tests.fakes import FakeUpstream

REDIS_BROKER = "redis://127.0.0.1:6379/0"
RABBITMQ_BROKER = "amqp://guest:guest@127.0.0.1:5672//"


@dataclass
class SlowUpstream(FakeUpstream):
    """The scripted upstream, answering each call ``delay`` seconds after it arrived (and recorded)."""

    delay: float = 0.05

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        response = await super()._openai(request)
        await asyncio.sleep(self.delay)
        return response


def fleet_config(upstream: SlowUpstream, prefix: str, lease_s: float = 2.0, visibility_s: float = 4.0) -> str:
    """Model ``m`` on the upstream; jobs with short leases so a killed worker's jobs come back fast."""
    return f"""
models:
  - name: m
    deployments:
      - provider: openai
        api_base: {upstream.url("ok")}
        price: {{input_per_1m: 1.0, output_per_1m: 2.0}}
access:
  keys_refresh_s: 5  # the slowest allowed: a worker learns a new key from the job that needs it
  ledger_flush_s: 0.2
jobs:
  workers: 4
  lease_s: {lease_s}
  cancel_poll_s: 0.2
  celery_prefix: {prefix}
  celery_visibility_timeout_s: {visibility_s}
"""


def new_prefix() -> str:
    """Queue names and Redis keys of one test, apart from every other test and session."""
    return "tw-test-" + secrets.token_hex(4)


@contextmanager
def worker_process(config_path: Path, env: dict[str, str], log: Path, concurrency: int = 4, *args: str
                   ) -> Iterator[subprocess.Popen[bytes]]:
    """``tokenway worker`` in its own process; stopped with SIGTERM (then SIGKILL) if still running."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tokenway", "worker", "--config", str(config_path),
             "--concurrency", str(concurrency), "--loglevel", "info", *args],
            env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.time() < deadline, f"gave up after {timeout}s waiting for {what}"
        time.sleep(interval)


def pg_fetch(schema: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    async def fetch() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(PG, server_settings={"search_path": schema})
        try:
            return [tuple(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def drop_redis_keys(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_BROKER)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def drop_rabbitmq_queues(names: list[str]) -> None:
    from kombu import Connection

    with Connection(RABBITMQ_BROKER) as conn:
        channel = conn.channel()
        for name in names:
            channel.queue_delete(name)
