"""The counter-store contract, run against both stores: in process and Redis (a real server).

Every admission takes all of its buckets, its slot and its budget hold, or nothing; settles move
the counters to the real usage; a shared store merges the settles of one loop turn into one call.
Redis leases (far from its limits, a process spends a share of the counters without a call) are
tested at the end.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from tests.access_support import REDIS
from tests.servers import free_port
from tokenway.stores import redis as redis_store
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


# Redis leases: far from its limits, the script call that admits a request also takes a share for
# the process, and the next asks of the same shape spend it without a call.


def _script_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))


@pytest.fixture
def stats() -> Iterator[redis.Redis]:
    """Server-wide command counts, zeroed: other clients of the same Redis would add to them."""
    client = redis.Redis.from_url(REDIS)
    client.config_resetstat()
    yield client
    client.close()


def _redis_counters(prefix: str | None = None) -> RedisCounters:
    return RedisCounters(REDIS, prefix=prefix or f"tw-test-{secrets.token_hex(4)}:")


async def test_redis_far_from_the_limits_most_admissions_make_no_script_call(stats: redis.Redis) -> None:
    prefix = f"tw-test-{secrets.token_hex(4)}:"
    counters = _redis_counters(prefix)
    rpm = Bucket("rpm:key:f", 1_000_000, "requests", "key")
    tpm = Bucket("tpm:key:f", 100_000_000, "tokens", "key")
    line = _line("f", 1000.0)
    sequential = [await counters.admit(Ask([rpm, tpm], 10, [line], 1_000)) for _ in range(300)]
    concurrent = await asyncio.gather(*(counters.admit(Ask([rpm, tpm], 10, [line], 1_000)) for _ in range(300)))
    calls = _script_calls(stats)
    assert all(d.admitted for d in [*sequential, *concurrent])
    assert calls <= 8  # 129 requests a call (one, and a share of 128), against 600 without a lease
    # The headers count down from the shared level as the share is spent.
    assert [d.levels[0] - sequential[0].levels[0] for d in sequential[:4]] == [0, -1, -2, -3]
    assert [d.levels[1] - sequential[0].levels[1] for d in sequential[:4]] == [0, -10, -20, -30]
    assert await counters.committed(line) >= 600 * 1_000  # what this process holds counts as spent
    await counters.aclose()
    again = _redis_counters(prefix)
    assert await again.committed(line) == 600 * 1_000  # the unspent units went back at shutdown
    await again.aclose()


async def test_redis_near_a_limit_nothing_is_leased_and_limits_stay_exact(stats: redis.Redis) -> None:
    counters = _redis_counters()
    rpm = Bucket("rpm:key:n", 50, "requests", "key")
    results = await asyncio.gather(*(counters.admit(Ask([rpm], 0)) for _ in range(200)))
    assert sum(r.admitted for r in results) == 50
    assert _script_calls(stats) == 200  # every ask decided by Redis
    # A budget with room for 1,000 requests: leased while far from it, exact at its end.
    line = _line("n", 1.0)
    rpm = Bucket("rpm:key:n2", 1_000_000, "requests", "key")
    results = await asyncio.gather(*(counters.admit(Ask([rpm], 0, [line], 1_000_000)) for _ in range(1_500)))
    assert sum(r.admitted for r in results) == 1_000
    assert {r.budget_full for r in results if not r.admitted} == {0}
    assert await counters.committed(line) == 1_000_000_000
    await counters.aclose()


async def test_redis_unspent_units_go_back_when_the_share_expires_and_the_rest_of_a_unit_at_once(
    stats: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store, "LEASE_TTL_S", 0.3)
    counters = _redis_counters()
    rpm = Bucket("rpm:key:e", 100_000, "requests", "key")
    line = _line("e", 1000.0)
    assert (await counters.admit(Ask([rpm], 100, [line], 1_000))).admitted
    assert await counters.committed(line) == 129 * 1_000  # the request and a share of 128
    assert (await counters.admit(Ask([rpm], 50, [line], 400))).admitted  # fits in a unit: spends one
    await counters.flush()
    assert await counters.committed(line) == 129 * 1_000 - 600  # what the unit held beyond the ask is back
    await asyncio.sleep(0.5)
    await counters.flush()
    assert await counters.committed(line) == 1_400  # the share expired: its 127 units went back
    assert _script_calls(stats) == 3  # one admission, two settles
    await counters.aclose()


async def test_redis_a_cancelled_request_gives_back_what_it_took_and_keeps_the_share() -> None:
    prefix = f"tw-test-{secrets.token_hex(4)}:"
    counters = _redis_counters(prefix)
    line = _line("c", 1000.0)
    first = asyncio.ensure_future(counters.admit(Ask([], 0, [line], 1_000)))
    await asyncio.sleep(0)  # its call is on its way
    second = asyncio.ensure_future(counters.admit(Ask([], 0, [line], 1_000)))  # waits for that call
    await asyncio.sleep(0)
    first.cancel()
    assert (await second).admitted  # from the share the cancelled request's call took
    await counters.aclose()
    assert first.cancelled()
    again = _redis_counters(prefix)
    assert await again.committed(line) == 1_000
    await again.aclose()


async def test_redis_two_processes_leasing_one_budget_never_overspend() -> None:
    prefix = f"tw-test-{secrets.token_hex(4)}:"
    a, b = _redis_counters(prefix), _redis_counters(prefix)
    line = _line("p", 2.0)  # room for 2,000 requests
    rpm = Bucket("rpm:key:p", 1_000_000, "requests", "key")
    results = await asyncio.gather(*(
        store.admit(Ask([rpm], 10, [line], 1_000_000)) for _ in range(1_500) for store in (a, b)))
    admitted = sum(r.admitted for r in results)
    assert await a.committed(line) <= 2_000_000_000
    await a.aclose()
    await b.aclose()
    check = _redis_counters(prefix)
    assert 1_900 <= admitted <= 2_000  # refused early only while the other process held a share
    assert await check.committed(line) == admitted * 1_000_000
    await check.aclose()
