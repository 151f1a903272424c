"""Admission: a bounded priority queue in front of max_concurrency, shedding with Retry-After."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from tests.fakes import FakeUpstream
from tests.servers import running_gateway
from tests.test_resilience_retries import chat, decisions, gateway_yaml
from tokenway.policies.admission import AdmissionQueue, Shed
from tokenway.routing.options import QueueConfig


def test_queued_calls_wait_for_a_slot_instead_of_failing(upstream: FakeUpstream) -> None:
    upstream.first_delay = 0.3
    yaml = gateway_yaml(upstream, "slowfirst", model="queue: {size: 8}", deployment=", max_concurrency: 1")
    with running_gateway(yaml) as base:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: chat(base, stream=True), range(4)))
        stats = decisions(base)
    assert [r.status_code for r in results] == [200] * 4
    assert stats["queue.wait"] >= 3


def test_full_queue_sheds_with_retry_after(upstream: FakeUpstream) -> None:
    upstream.first_delay = 0.5
    yaml = gateway_yaml(upstream, "slowfirst", model="queue: {size: 1}", deployment=", max_concurrency: 1")
    with running_gateway(yaml) as base:
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda _: chat(base, stream=True), range(3)))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 200, 503]
    shed = next(r for r in results if r.status_code == 503)
    assert shed.json()["error"]["code"] == "overloaded" and "retry-after" in shed.headers


def test_a_wait_that_cannot_meet_the_deadline_is_shed_early(upstream: FakeUpstream) -> None:
    upstream.first_delay = 1.5
    yaml = gateway_yaml(upstream, "slowfirst", model="queue: {size: 8, max_wait: 0.3}",
                        deployment=", max_concurrency: 1")
    with running_gateway(yaml) as base:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(chat, base, stream=True)
            time.sleep(0.2)
            started = time.perf_counter()
            second = chat(base)
            waited = time.perf_counter() - started
            assert first.result().status_code == 200
    assert second.status_code == 503 and waited < 1.2  # gave up at max_wait, did not wait for the slot


def test_priority_then_arrival_order() -> None:
    async def scenario() -> list[str]:
        queue = AdmissionQueue(QueueConfig(size=10, max_wait=5), slots=1)
        order: list[str] = []

        async def waiter(name: str, priority: int) -> None:
            await queue.wait(priority, None)
            order.append(name)
            queue.taken()

        tasks = []
        for name, priority in (("low-1", 0), ("high", 5), ("low-2", 0), ("mid", 1)):
            tasks.append(asyncio.create_task(waiter(name, priority)))
            await asyncio.sleep(0)
        for _ in tasks:
            queue.released(0.01)
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == ["high", "mid", "low-1", "low-2"]


def test_queue_without_room_sheds() -> None:
    async def scenario() -> None:
        queue = AdmissionQueue(QueueConfig(size=0), slots=1)
        try:
            await queue.wait(0, None)
        except Shed as shed:
            assert shed.status == 503 and shed.retry_after
            return
        raise AssertionError("expected a shed")

    asyncio.run(scenario())
