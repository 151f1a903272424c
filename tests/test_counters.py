"""The counter-store contract, run against both stores: in process and Redis (a real server).

Every admission takes all of its buckets, its slot and its budget hold, or nothing; settles move
the counters to the real usage; a shared store merges the settles of one loop turn into one call.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from tests.access_support import REDIS
from tests.servers import free_port
from tokenway.stores.base import Budget
from tokenway.stores.counters import Ask, Bucket, BudgetLine, Counters, CountersUnavailable
from tokenway.stores.memory import MemoryCounters
from tokenway.stores.redis import RedisCounters


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def counters(request: pytest.FixtureRequest) -> AsyncIterator[Counters]:
    store: Counters = MemoryCounters() if request.param == "memory" else (
        RedisCounters(REDIS, prefix=f"tw-test-{secrets.token_hex(4)}:"))
    yield store
    await store.aclose()


async def _flushed(counters: Counters) -> None:
    if isinstance(counters, RedisCounters):
        await counters.flush()


def _line(name: str, dollars: float) -> BudgetLine:
    budget = Budget(amount=dollars, period="day")
    return BudgetLine(f"budget:key:{name}:d", budget.nanos, 60, "key", budget)


async def test_buckets_are_all_or_nothing_under_concurrency(counters: Counters) -> None:
    rpm = Bucket("rpm:key:a", 50, "requests", "key")
    tpm = Bucket("tpm:key:a", 10_000, "tokens", "key")
    results = await asyncio.gather(*(counters.admit(Ask([rpm, tpm], 10)) for _ in range(200)))
    assert sum(r.admitted for r in results) == 50
    refused = next(r for r in results if not r.admitted)
    assert refused.denied == 0 and 0 < refused.retry_after <= 1.3
    assert 9_499 <= refused.levels[1] <= 9_550  # the refused requests took no tokens (plus a refill)


async def test_slot_and_budget_hold_are_atomic_with_the_buckets(counters: Counters) -> None:
    asks = [Ask([], 0, slot="conc:key:a", slot_limit=3, member=f"r{i}") for i in range(20)]
    results = await asyncio.gather(*(counters.admit(ask) for ask in asks))
    held = [ask for ask, r in zip(asks, results, strict=True) if r.admitted]
    assert len(held) == 3 and {r.denied for r in results if not r.admitted} == {0}  # 0 buckets: the slot is 0
    counters.settle(held[0], 0, 0)
    await _flushed(counters)
    assert (await counters.admit(Ask([], 0, slot="conc:key:a", slot_limit=3, member="late"))).admitted

    key, team = _line("a", 1.0), _line("t", 0.5)
    rpm = Bucket("rpm:key:b", 1000, "requests", "key")
    outcomes = await asyncio.gather(*(counters.admit(Ask([rpm], 0, [key, team], 100_000_000)) for _ in range(40)))
    assert sum(o.admitted for o in outcomes) == 5  # the team's $0.50 is the tighter line
    assert {o.budget_full for o in outcomes if not o.admitted} == {1}
    assert await counters.committed(key) == 500_000_000
    refused = next(o for o in outcomes if not o.admitted)
    assert refused.committed == 500_000_000 and refused.levels[0] > 990  # a refused hold takes no request


async def test_settles_move_tokens_money_and_free_slots(counters: Counters) -> None:
    tpm = Bucket("tpm:key:m", 100_000, "tokens", "key")
    line = _line("m", 1.0)
    asks = [Ask([tpm], 0, [line], 1_000_000, slot="conc:key:m", slot_limit=100, member=f"r{i}") for i in range(30)]
    assert all(d.admitted for d in await asyncio.gather(*(counters.admit(ask) for ask in asks)))
    for ask in asks:  # thirty requests end in the same loop turn: 100 tokens more, $0.0004 less each
        counters.settle(ask, 100, -400_000)
    await _flushed(counters)
    assert await counters.committed(line) == 30 * 600_000
    after = await counters.admit(Ask([tpm], 0, slot="conc:key:m", slot_limit=1, member="next"))
    assert after.admitted  # every slot was freed
    assert 97_000 <= after.levels[0] <= 97_000 + 100  # 3,000 taken, plus what refilled since


async def test_buckets_refill_at_their_rate_and_debt_is_bounded() -> None:
    clock = Clock()
    counters = MemoryCounters(clock)
    rpm = Bucket("rpm:key:r", 60, "requests", "key")  # one a second
    assert sum([(await counters.admit(Ask([rpm], 0))).admitted for _ in range(61)]) == 60
    refused = await counters.admit(Ask([rpm], 0))
    assert refused.denied == 0 and refused.retry_after == pytest.approx(1.0)
    clock.now += 2.0
    assert [(await counters.admit(Ask([rpm], 0))).admitted for _ in range(3)] == [True, True, False]
    tpm = Bucket("tpm:key:r", 600, "tokens", "key")
    ask = Ask([tpm], 100)
    assert (await counters.admit(ask)).admitted
    counters.settle(ask, 10_000, 0)  # far more than the bucket holds: in debt by a minute's capacity at most
    clock.now += 60.0
    assert not (await counters.admit(Ask([tpm], 1))).admitted
    clock.now += 60.0
    assert (await counters.admit(Ask([tpm], 500))).admitted


async def test_redis_settles_still_queued_at_shutdown_are_sent_before_the_connection_closes() -> None:
    prefix = f"tw-test-{secrets.token_hex(4)}:"
    line = _line("s", 1.0)
    counters = RedisCounters(REDIS, prefix=prefix)
    ask = Ask([], 0, [line], 1_000_000)
    assert (await counters.admit(ask)).admitted
    counters.settle(ask, 0, -250_000)  # queued for the next loop turn ...
    await counters.aclose()  # ... which never comes before the close
    again = RedisCounters(REDIS, prefix=prefix)
    try:
        assert await again.committed(line) == 750_000
    finally:
        await again.aclose()


async def test_a_dead_redis_raises_unavailable_fast_and_a_lost_settle_is_counted() -> None:
    counters = RedisCounters(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    ask = Ask([Bucket("rpm:key:x", 5, "requests", "key")], 0, [_line("x", 1.0)], 5)
    for _ in range(4):  # after three failures in a row it stops trying for a moment
        with pytest.raises(CountersUnavailable):
            await counters.admit(ask)
    counters.settle(ask, 0, -5)
    await counters.flush()
    assert counters.failures == 1
    await counters.aclose()
