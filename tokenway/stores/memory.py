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

    async def acquire(
        self, buckets: Sequence[Bucket], tokens: int, slot: Slot | None = None, reservation: Reservation | None = None
    ) -> Admission:
        now = time.monotonic()
        states = self._buckets
        after: list[float] = []  # each bucket's level once this request has taken from it
        for bucket in buckets:  # one loop, no helper calls: this runs on every limited request
            capacity = bucket.capacity
            state = states.get(bucket.key)
            level: float
            if state is None:
                level = capacity
            else:
                level = state[0] + (now - state[1]) * capacity / 60.0
                if level > capacity:
                    level = capacity
            after.append(level - tokens if bucket.kind == "tokens" else level - 1)
        if after and min(after) < 0:
            return _refused(buckets, tokens, after)
        if slot is not None:
            held = self._slots.setdefault(slot.key, {})
            for member in [m for m, expiry in held.items() if expiry <= now]:
                del held[member]
            if len(held) >= slot.limit:
                return Admission(len(buckets), 1.0, _before(buckets, tokens, after))
            held[slot.member] = now + slot.ttl_s
        for bucket, left in zip(buckets, after, strict=True):
            states[bucket.key] = (left, now)
        if reservation is None:
            return Admission(None, 0.0, after)
        return Admission(None, 0.0, after, self._reserve(reservation.lines, reservation.amount)[0] is None)

    def finish(
        self, slot: Slot | None, buckets: Sequence[Bucket], delta: int, lines: Sequence[BudgetLine] = (), money: int = 0
    ) -> None:
        if slot is not None:
            held = self._slots.get(slot.key)
            if held is not None:
                held.pop(slot.member, None)
        if delta:
            now = time.monotonic()
            states = self._buckets
            for bucket in buckets:
                capacity = bucket.capacity
                state = states.get(bucket.key)
                level: float = capacity if state is None else state[0] + (now - state[1]) * capacity / 60.0
                if level > capacity:
                    level = capacity
                level -= delta
                states[bucket.key] = (level if level > -capacity else -capacity, now)  # debt: at most a minute's
        if money:
            budgets = self._budgets
            for line in lines:
                budgets[line.key] = budgets.get(line.key, 0) + money

    async def reserve(self, lines: list[BudgetLine], amount: int) -> tuple[int | None, int]:
        return self._reserve(lines, amount)

    def _reserve(self, lines: list[BudgetLine], amount: int) -> tuple[int | None, int]:
        budgets = self._budgets
        for i, line in enumerate(lines):
            used = budgets.get(line.key, 0)
            if used + amount > line.limit:
                return i, used
        for line in lines:
            budgets[line.key] = budgets.get(line.key, 0) + amount
        return None, 0

    def settle(self, lines: list[BudgetLine], delta: int) -> None:
        self.finish(None, (), 0, lines, delta)

    async def committed(self, line: BudgetLine) -> int:
        return self._budgets.get(line.key, 0)

    async def seed(self, line: BudgetLine, amount: int) -> None:
        self._budgets.setdefault(line.key, amount)

    async def aclose(self) -> None:
        return None



def _before(buckets: Sequence[Bucket], tokens: int, after: list[float]) -> list[float]:
    """The levels before a request that was refused took anything (what the headers report)."""
    pairs = zip(buckets, after, strict=True)
    return [level + tokens if bucket.kind == "tokens" else level + 1 for bucket, level in pairs]


def _refused(buckets: Sequence[Bucket], tokens: int, after: list[float]) -> Admission:
    denied = next(i for i, level in enumerate(after) if level < 0)
    bucket = buckets[denied]
    return Admission(denied, -after[denied] * 60.0 / bucket.capacity, _before(buckets, tokens, after))
