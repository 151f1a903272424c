"""The Redis counters against a real Redis: atomic under concurrency, and a dead Redis never hangs."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import httpx
import pytest

from tests.access_support import REDIS, chat, config, create_key, gateway
from tests.fakes import FakeUpstream
from tests.servers import free_port
from tokenway.stores.base import Bucket, Budget, BudgetLine, Slot
from tokenway.stores.redis import RedisCounters


def _counters() -> RedisCounters:
    return RedisCounters(REDIS, prefix=f"tw-test-{secrets.token_hex(4)}:")


async def test_buckets_are_all_or_nothing_under_concurrency() -> None:
    counters = _counters()
    try:
        rpm = Bucket("rpm:key:a", 50, "requests", "key")
        tpm = Bucket("tpm:key:a", 10_000, "tokens", "key")
        results = await asyncio.gather(*(counters.acquire([rpm, tpm], 10) for _ in range(200)))
        assert sum(r.denied is None for r in results) == 50
        denied = next(r for r in results if r.denied is not None)
        assert denied.denied == 0 and 0 < denied.retry_after <= 1.3
        assert 9_500 <= denied.levels[1] <= 9_550  # the refused requests took no tokens (plus a refill)
        counters.finish(None, [tpm], 500)
        await counters.flush()
        after = await counters.acquire([tpm], 10)
        assert after.levels[0] <= 10_000 - 1010 + 100
    finally:
        await counters.aclose()


async def test_concurrency_slots_and_budget_reservations_are_atomic() -> None:
    counters = _counters()
    try:
        slots = [Slot("conc:key:a", 3, f"r{i}") for i in range(20)]
        results = await asyncio.gather(*(counters.acquire([], 0, s) for s in slots))
        held = [s for s, r in zip(slots, results, strict=True) if r.denied is None]
        assert len(held) == 3
        counters.finish(held[0], [], 0)
        await counters.flush()
        assert (await counters.acquire([], 0, Slot("conc:key:a", 3, "late"))).denied is None

        budget = Budget(amount=1.0, period="day")
        key = BudgetLine("budget:key:a:d", budget.nanos, 60, "key", budget)
        team = BudgetLine("budget:team:t:d", budget.nanos // 2, 60, "team", budget)
        outcomes = await asyncio.gather(*(counters.reserve([key, team], 100_000_000) for _ in range(40)))
        assert sum(full is None for full, _ in outcomes) == 5  # the team's $0.50 is the tighter one
        assert {full for full, _ in outcomes if full is not None} == {1}
        assert await counters.committed(key) == 500_000_000
        counters.settle([key, team], -60_000_000)
        await counters.flush()
        assert await counters.committed(team) == 440_000_000
    finally:
        await counters.aclose()


async def test_settles_of_one_loop_turn_are_merged_and_applied_exactly() -> None:
    counters = _counters()
    try:
        tpm = Bucket("tpm:key:m", 100_000, "tokens", "key")
        budget = Budget(amount=1.0, period="day")
        line = BudgetLine("budget:key:m:d", budget.nanos, 60, "key", budget)
        slots = [Slot("conc:key:m", 100, f"r{i}") for i in range(30)]
        await asyncio.gather(*(counters.acquire([tpm], 0, slot) for slot in slots))
        assert (await counters.reserve([line], 30 * 1_000_000))[0] is None
        for slot in slots:  # thirty requests end in the same loop turn
            counters.finish(slot, [tpm], 100)
            counters.settle([line], -400_000)
        await counters.flush()
        assert await counters.committed(line) == 30 * 600_000
        after = await counters.acquire([tpm], 0, Slot("conc:key:m", 1, "next"))
        assert after.denied is None  # every slot was freed
        assert 97_000 <= after.levels[0] <= 97_000 + 100  # 3,000 taken, plus what refilled since
    finally:
        await counters.aclose()


async def test_settles_still_queued_at_shutdown_are_sent_before_the_connection_closes() -> None:
    prefix = f"tw-test-{secrets.token_hex(4)}:"
    budget = Budget(amount=1.0, period="day")
    line = BudgetLine("budget:key:s:d", budget.nanos, 60, "key", budget)
    counters = RedisCounters(REDIS, prefix=prefix)
    assert (await counters.reserve([line], 1_000_000))[0] is None
    counters.settle([line], -250_000)  # queued for the next loop turn ...
    await counters.aclose()  # ... which never comes before the close
    again = RedisCounters(REDIS, prefix=prefix)
    try:
        assert await again.committed(line) == 750_000
    finally:
        await again.aclose()


async def test_a_settle_that_cannot_reach_redis_is_counted_not_raised() -> None:
    counters = RedisCounters(_dead_redis(), timeout_s=0.2)
    budget = Budget(amount=1.0, period="day")
    counters.settle([BudgetLine("budget:key:x:d", budget.nanos, 60, "key", budget)], -5)
    await counters.flush()
    assert counters.settle_failures == 1
    await counters.aclose()


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
