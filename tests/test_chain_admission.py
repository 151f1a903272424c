"""The admission queue in process: waiting for a slot, shedding when full or past the deadline, priority."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import httpx

from tests.inprocess import Harness, gateway, reply

ONE_SLOT = "      - {provider: fake, name: a, max_concurrency: 1}\n"


def queued(queue: str) -> str:
    """Model ``m``: one deployment that takes one call at a time, and this queue in front of it."""
    return f"models:\n  - name: m\n    queue: {queue}\n    deployments:\n{ONE_SLOT}"


async def together(gw: Harness, *requests: Awaitable[httpx.Response]) -> list[tuple[int, float]]:
    """Run the requests at once on the fake clock: (status, seconds until it ended) for each."""
    started = gw.clock.now()

    async def timed(request: Awaitable[httpx.Response]) -> tuple[int, float]:
        response = await request
        return response.status_code, gw.clock.now() - started

    return await gw.clock.run(asyncio.gather(*(timed(r) for r in requests)))


async def test_queued_calls_wait_for_a_slot_and_are_served_one_after_another() -> None:
    async with gateway(queued("{size: 8}")) as gw:
        gw.fake("a").script(then=reply(delay=1))
        results = await together(gw, *(gw.request() for _ in range(4)))
        assert results == [(200, 1.0), (200, 2.0), (200, 3.0), (200, 4.0)]
        assert gw.decisions()["queue.wait"] == 3


async def test_a_full_queue_sheds_at_once_with_retry_after() -> None:
    async with gateway(queued("{size: 1}")) as gw:
        gw.fake("a").script(then=reply(delay=1))
        shed = await gw.clock.run(asyncio.gather(gw.request(), gw.request(), gw.request()))
        assert [r.status_code for r in shed] == [200, 200, 503]
        assert shed[2].json()["error"]["code"] == "overloaded" and "full" in shed[2].json()["error"]["message"]
        assert int(shed[2].headers["retry-after"]) >= 1
        assert gw.decisions()["shed.queue"] == 1


async def test_a_queued_call_gives_up_at_max_wait_not_when_the_slot_frees() -> None:
    async with gateway(queued("{size: 8, max_wait: 2}")) as gw:
        gw.fake("a").script(reply(delay=5))
        assert await together(gw, gw.request(), gw.request()) == [(200, 5.0), (503, 2.0)]


async def test_a_wait_that_cannot_meet_the_limit_is_shed_without_waiting() -> None:
    # Before any call has finished, the queue expects a slot to take a second (service_ewma = 1 s).
    async with gateway(queued("{size: 8, max_wait: 0.5}")) as gw:
        gw.fake("a").script(reply(delay=5))
        assert await together(gw, gw.request(), gw.request()) == [(200, 5.0), (503, 0.0)]


async def test_a_higher_priority_call_is_served_before_earlier_ones() -> None:
    async with gateway(queued("{size: 8}")) as gw:
        gw.fake("a").script(then=reply(delay=1))
        results = await together(
            gw, gw.request(), gw.request(), gw.request(headers={"x-tokenway-priority": "5"}), gw.request(),
        )
        assert results == [(200, 1.0), (200, 3.0), (200, 2.0), (200, 4.0)]


async def test_without_a_queue_a_busy_model_sheds() -> None:
    async with gateway(queued("{size: 0}")) as gw:
        gw.fake("a").script(reply(delay=1))
        results = await together(gw, gw.request(), gw.request())
        assert results == [(200, 1.0), (503, 0.0)]
        assert gw.decisions()["shed.no_queue"] == 1


async def test_a_full_queue_sheds_its_lowest_waiter_for_a_higher_priority_call() -> None:
    # Jobs queue at priority -5: a live call arriving at a queue full of them takes a job's place.
    low = {"x-tokenway-priority": "-5"}
    async with gateway(queued("{size: 2}")) as gw:
        gw.fake("a").script(then=reply(delay=1))
        results = await together(gw, gw.request(), gw.request(headers=low), gw.request(headers=low),
                                 gw.request(), gw.request(headers=low))
        # The live call displaces the later job (503 at once) and is served next; a full queue of
        # calls that do not rank below the newcomer still sheds it.
        assert results == [(200, 1.0), (200, 3.0), (503, 0.0), (200, 2.0), (503, 0.0)]
