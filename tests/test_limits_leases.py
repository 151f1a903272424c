"""Shares of the Redis counters leased to a process: spent without Redis, exact when they go back."""

from __future__ import annotations

import asyncio
import secrets
import time

from tests.access_support import REDIS, Held
from tokenway.stores.base import Bucket, Budget, BudgetLine
from tokenway.stores.leases import FRACTION, MOST_REQUESTS, TTL_S, LeaseCells
from tokenway.stores.redis import RedisCounters

RPM = Bucket("rpm:key:l", 1_000_000, "requests", "key")
TPM = Bucket("tpm:key:l", 100_000_000, "tokens", "key")
BUDGET = Budget(amount=1000.0, period="day")
AMOUNT = 1_000_000  # nano-dollars one request reserves
COST = 600_000  # and spends


def _line(limit: int = BUDGET.nanos) -> BudgetLine:
    return BudgetLine("budget:key:l:d", limit, 60, "key", BUDGET)


async def _request(cells: LeaseCells, counters: RedisCounters, line: BudgetLine, tokens: int = 10) -> str:
    """One request the way the rate-limit policy makes it: in process first, then Redis; settled at once
    (as a budget attempt would, when the share could not cover the money)."""
    hold: Held | None = Held([line], AMOUNT)
    levels = cells.take(tokens, time.monotonic())
    if levels is not None:
        assert hold is not None
        if cells.reserve(AMOUNT) is not None:
            hold = None
        where = "share"
    else:
        admission = await cells.acquire(tokens, None, hold)
        if admission.denied is not None:
            return "refused"
        if not admission.held:
            hold = None
        where = "redis"
    if hold is None:  # the attempt reserves for itself
        full, _ = await counters.reserve([line], AMOUNT)
        if full is not None:
            cells.settle(None, 0, 0)
            return "budget"
        counters.settle([line], COST - AMOUNT)
        cells.settle(None, -2, 0)
        return where
    cells.settle(None, -2, COST - AMOUNT)  # two tokens fewer than estimated, and the money down to its cost
    return where


async def _script_calls() -> int:
    """Script calls Redis has run (all clients): from ``INFO commandstats``."""
    probe = RedisCounters(REDIS)
    try:
        info = (await probe._redis.call("INFO", "commandstats")).decode()
    finally:
        await probe.aclose()
    return sum(int(line.split("calls=")[1].split(",")[0]) for line in info.splitlines()
               if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")))


async def test_a_share_serves_requests_in_process_and_goes_back_in_full() -> None:
    prefix = f"tw-test-{secrets.token_hex(4)}:"
    counters = RedisCounters(REDIS, prefix=prefix)
    line = _line()
    cells = counters.cells([RPM, TPM], None, [line])
    started = time.monotonic()
    assert await _request(cells, counters, line) == "redis"  # the first asks Redis and gets a share
    served = [await _request(cells, counters, line) for _ in range(MOST_REQUESTS)]
    assert served == ["share"] * MOST_REQUESTS  # the next requests spend it without a store call
    assert await _request(cells, counters, line) == "redis"  # spent: the next renews it
    assert await counters.committed(line) > (MOST_REQUESTS + 2) * COST  # the new share is held in Redis
    await counters.aclose()  # what is left goes back at shutdown

    again = RedisCounters(REDIS, prefix=prefix)
    try:
        assert await again.committed(line) == (MOST_REQUESTS + 2) * COST  # exactly what was spent
        level = (await again.acquire([RPM], 0)).levels[0]
        refilled = (time.monotonic() - started) * RPM.capacity / 60
        assert RPM.capacity - (MOST_REQUESTS + 3) <= level <= RPM.capacity - (MOST_REQUESTS + 3) + refilled + 1
    finally:
        await again.aclose()


async def test_an_unused_share_goes_back_after_its_time() -> None:
    counters = RedisCounters(REDIS, prefix=f"tw-test-{secrets.token_hex(4)}:")
    try:
        line = _line()
        cells = counters.cells([RPM], None, [line])
        assert await _request(cells, counters, line) == "redis"
        assert await counters.committed(line) == (1 + MOST_REQUESTS) * AMOUNT  # its settle went into the share
        await asyncio.sleep(TTL_S + 0.3)
        await counters.flush()
        assert await counters.committed(line) == COST
        assert cells.take(1, time.monotonic()) is None  # the share is gone
    finally:
        await counters.aclose()


async def test_near_a_limit_nothing_is_leased() -> None:
    counters = RedisCounters(REDIS, prefix=f"tw-test-{secrets.token_hex(4)}:")
    try:
        line = _line(limit=(FRACTION - 1) * AMOUNT)  # less than FRACTION requests' worth left
        cells = counters.cells([RPM], None, [line])
        assert [await _request(cells, counters, line) for _ in range(3)] == ["redis"] * 3
        small = Bucket("rpm:key:small", FRACTION, "requests", "key")
        few = counters.cells([small], None, [])
        assert (await few.acquire(0, None, None)).levels == [FRACTION - 1]
        assert few.take(0, time.monotonic()) is None
    finally:
        await counters.aclose()


async def test_a_request_cancelled_while_waiting_for_a_renewal_cancels_nothing_else() -> None:
    prefix = f"tw-test-{secrets.token_hex(4)}:"
    counters = RedisCounters(REDIS, prefix=prefix)
    cells = counters.cells([RPM], None, [])
    started = time.monotonic()
    renewing = asyncio.ensure_future(cells.acquire(0, None, None))
    waiting = [asyncio.ensure_future(cells.acquire(0, None, None)) for _ in range(3)]
    await asyncio.sleep(0)  # one turn: the first is making the script call, the others wait for it
    waiting[1].cancel()
    served = [await renewing, await waiting[0], await waiting[2]]
    assert [a.denied for a in served] == [None] * 3 and waiting[1].cancelled()
    assert cells.take(0, time.monotonic()) is not None  # the two waiters were served from the new share
    await counters.aclose()

    again = RedisCounters(REDIS, prefix=prefix)
    try:  # exactly the four requests served are spent: the cancelled one took nothing
        level = (await again.acquire([RPM], 0)).levels[0]
        refilled = (time.monotonic() - started) * RPM.capacity / 60
        assert RPM.capacity - 5 <= level <= RPM.capacity - 5 + refilled + 1
    finally:
        await again.aclose()


async def _two_processes(limit: int, requests: int) -> tuple[list[str], int, int]:
    """``requests`` requests, 64 at a time, alternating between two processes that share one budget line
    of ``limit``: what each got, the script calls Redis ran meanwhile, and the budget's committed
    total once both have shut down."""
    prefix = f"tw-test-{secrets.token_hex(4)}:"
    line = _line(limit)
    processes = [RedisCounters(REDIS, prefix=prefix) for _ in range(2)]
    cells = [p.cells([RPM, TPM], None, [line]) for p in processes]
    outcomes: list[str] = []
    gate = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with gate:
            outcomes.append(await _request(cells[i % 2], processes[i % 2], line))
            await asyncio.sleep(0)  # as if it waited for an upstream

    calls_before = await _script_calls()
    await asyncio.gather(*(one(i) for i in range(requests)))
    calls = await _script_calls() - calls_before
    for process in processes:
        await process.aclose()
    check = RedisCounters(REDIS, prefix=prefix)
    try:
        return outcomes, calls, await check.committed(line)
    finally:
        await check.aclose()


async def test_shares_of_two_processes_never_overspend_and_add_up_exactly() -> None:
    limit = 1000 * AMOUNT
    outcomes, _, committed = await _two_processes(limit, 2500)
    served = len(outcomes) - outcomes.count("refused") - outcomes.count("budget")
    assert committed == served * COST  # every share and every hold went back to the cost served
    assert committed <= limit
    assert served >= (limit - AMOUNT) // COST - 2 * MOST_REQUESTS  # shares left unused cost little


async def test_far_from_the_limits_most_requests_make_no_script_call() -> None:
    outcomes, calls, committed = await _two_processes(1_000_000 * AMOUNT, 3000)
    assert outcomes.count("refused") == outcomes.count("budget") == 0
    assert committed == 3000 * COST
    assert calls <= 3000 / 16, calls
