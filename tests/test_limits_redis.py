"""The Redis counters against a real Redis: atomic under concurrency, and a dead Redis never hangs."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.access_support import chat, config, create_key, gateway
from tests.fakes import FakeUpstream
from tests.servers import free_port


def _dead_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


def test_redis_down_fails_closed_fast_with_a_loud_log(
    upstream: FakeUpstream, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with gateway(config(upstream), tmp_path, redis_url=_dead_redis()) as (base, _):
        key = create_key(base, rpm=100)["key"]
        started = time.monotonic()
        codes = [chat(base, key).status_code for _ in range(5)]
        elapsed = time.monotonic() - started
        metrics = httpx.get(base + "/metrics").text
    assert codes == [503] * 5
    assert "tokenway_limits_store_failures_total 5.0" in metrics
    assert elapsed < 5
    assert '"event":"limits_store_down"' in capfd.readouterr().out
    assert upstream.seen == []


def test_redis_down_fails_open_when_configured(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream, "on_store_down: open"), tmp_path, redis_url=_dead_redis()) as (base, _):
        key = create_key(base, rpm=1, budget="1/day")["key"]
        codes = [chat(base, key).status_code for _ in range(3)]
    assert codes == [200, 200, 200]
