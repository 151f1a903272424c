"""In-process counters for one gateway process: the embedded default.

Every method runs to completion without awaiting anything, so on one event loop each
check-and-take is atomic by construction (no lock needed, no interleaving possible).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from tokenway.stores.base import Admission, Bucket, BudgetLine, Reservation, Slot


class MemoryCounters:
    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, monotonic time)
        self._slots: dict[str, dict[str, float]] = {}  # key -> member -> lease expiry
        self._budgets: dict[str, int] = {}
        self.settle_failures = 0  # settles apply at once and cannot fail

    def _level(self, bucket: Bucket, now: float) -> float:
        state = self._buckets.get(bucket.key)
        capacity = bucket.capacity
        if state is None:
            return capacity
        level = state[0] + (now - state[1]) * capacity / 60.0
        return capacity if level > capacity else level

    async def acquire(
        self, buckets: Sequence[Bucket], tokens: int, slot: Slot | None = None, reservation: Reservation | None = None
    ) -> Admission:
        now = time.monotonic()
        states = self._buckets
        levels: list[float] = []
        denied = None
        for bucket in buckets:  # one loop, no helper calls: this runs on every limited request
            capacity = bucket.capacity
            state = states.get(bucket.key)
            level = capacity if state is None else state[0] + (now - state[1]) * capacity / 60.0
            if level > capacity:
                level = capacity
            if denied is None and level < (tokens if bucket.kind == "tokens" else 1):
                denied = len(levels)
            levels.append(level)
        if denied is not None:
            cost = tokens if buckets[denied].kind == "tokens" else 1
            return Admission(denied, (cost - levels[denied]) * 60.0 / buckets[denied].capacity, levels)
        if slot is not None:
            held = self._slots.setdefault(slot.key, {})
            for member in [m for m, expiry in held.items() if expiry <= now]:
                del held[member]
            if len(held) >= slot.limit:
                return Admission(len(buckets), 1.0, levels)
            held[slot.member] = now + slot.ttl_s
        for i, bucket in enumerate(buckets):
            levels[i] -= tokens if bucket.kind == "tokens" else 1
            states[bucket.key] = (levels[i], now)
        reserved = reservation is not None and self._reserve(reservation.lines, reservation.amount)[0] is None
        return Admission(None, 0.0, levels, reserved)

    def finish(self, slot: Slot | None, buckets: Sequence[Bucket], delta: int) -> None:
        if slot is not None:
            held = self._slots.get(slot.key)
            if held is not None:
                held.pop(slot.member, None)
        if delta:
            now = time.monotonic()
            for bucket in buckets:
                level = max(self._level(bucket, now) - delta, -float(bucket.capacity))
                self._buckets[bucket.key] = (level, now)

    async def reserve(self, lines: list[BudgetLine], amount: int) -> tuple[int | None, int]:
        return self._reserve(lines, amount)

    def _reserve(self, lines: list[BudgetLine], amount: int) -> tuple[int | None, int]:
        for i, line in enumerate(lines):
            used = self._budgets.get(line.key, 0)
            if used + amount > line.limit:
                return i, used
        for line in lines:
            self._budgets[line.key] = self._budgets.get(line.key, 0) + amount
        return None, 0

    def settle(self, lines: list[BudgetLine], delta: int) -> None:
        for line in lines:
            self._budgets[line.key] = self._budgets.get(line.key, 0) + delta

    async def committed(self, line: BudgetLine) -> int:
        return self._budgets.get(line.key, 0)

    async def seed(self, line: BudgetLine, amount: int) -> None:
        self._budgets.setdefault(line.key, amount)

    async def aclose(self) -> None:
        return None

