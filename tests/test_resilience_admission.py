"""Admission: the queue's order and shedding, unit by unit.

Through the whole chain, on a fake clock: tests/test_chain_admission.py.
"""

from __future__ import annotations

import asyncio

from tokenway.policies.admission import AdmissionQueue, Shed
from tokenway.routing.options import QueueConfig


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
