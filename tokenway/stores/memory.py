"""Counters in process: the embedded default, for one gateway process.

Nothing here awaits, so on one event loop every admission is atomic by construction. A bucket is
kept as one number, the moment it will be full again (the generic cell rate algorithm): a bucket
of ``capacity`` per minute refills completely in 60 s, so a take fits while that moment stays
within a minute from now.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tokenway.stores.counters import Ask, BudgetLine, Decision

_MINUTE = 60.0


class MemoryCounters:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._full_at: dict[str, float] = {}  # bucket -> when it is full again
        self._slots: dict[str, dict[str, float]] = {}  # slot -> member -> lease expiry
        self._spent: dict[str, int] = {}  # budget line -> nano-dollars spent or reserved
        self.failures = 0  # nothing here can fail

    async def admit(self, ask: Ask) -> Decision:
        now = self._clock()
        full_at: list[float] = []  # when each bucket would be full again after this request
        before: list[float] = []  # each bucket's level now
        for bucket in ask.buckets:
            per_unit = _MINUTE / bucket.capacity
            full = max(self._full_at.get(bucket.key, now), now)
            full_at.append(full + (ask.tokens if bucket.kind == "tokens" else 1) * per_unit)
            before.append((now + _MINUTE - full) / per_unit)
        for i, when in enumerate(full_at):
            if when > now + _MINUTE:
                return Decision(before, denied=i, retry_after=when - now - _MINUTE)
        members = None
        if ask.slot is not None:
            members = self._slots.setdefault(ask.slot, {})
            for gone in [m for m, expiry in members.items() if expiry <= now]:
                del members[gone]
            if len(members) >= ask.slot_limit:
                return Decision(before, denied=len(ask.buckets), retry_after=1.0)
        for i, line in enumerate(ask.lines):
            committed = self._spent.get(line.key, 0)
            if committed + ask.amount > line.limit:
                return Decision(before, budget_full=i, committed=committed)
        for bucket, when in zip(ask.buckets, full_at, strict=True):
            self._full_at[bucket.key] = when
        if members is not None:
            members[ask.member] = now + 3600.0  # a request that never settles gives its place back in an hour
        for line in ask.lines:
            self._spent[line.key] = self._spent.get(line.key, 0) + ask.amount
        after = [(now + _MINUTE - when) * b.capacity / _MINUTE for b, when in zip(ask.buckets, full_at, strict=True)]
        return Decision(after)

    def settle(self, ask: Ask, tokens: int, money: int) -> None:
        if ask.slot is not None:
            self._slots.get(ask.slot, {}).pop(ask.member, None)
        if tokens:
            now = self._clock()
            for bucket in ask.buckets:
                if bucket.kind == "tokens":  # in debt by at most a minute's capacity
                    when = max(self._full_at.get(bucket.key, now), now) + tokens * _MINUTE / bucket.capacity
                    self._full_at[bucket.key] = min(when, now + 2 * _MINUTE)
        for line in ask.lines:
            self._spent[line.key] = self._spent.get(line.key, 0) + money

    async def committed(self, line: BudgetLine) -> int:
        return self._spent.get(line.key, 0)

    async def seed(self, line: BudgetLine, amount: int) -> None:
        self._spent.setdefault(line.key, amount)

    async def aclose(self) -> None:
        return None
