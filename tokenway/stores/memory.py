"""In-process counters for one gateway process: the embedded default.

Nothing here awaits, so on one event loop each check-and-take is atomic by construction (no
lock needed, no interleaving possible). A token bucket is kept as one number, the moment it
will be full again (the generic cell rate algorithm): a bucket of ``capacity`` per minute
refills completely in 60 s, so a take fits when that moment stays within a minute from now,
and its level follows from it. The rate-limit policy's plans hold ``Cells``, the state of
their own buckets, slot and budget lines, so a request takes from them with a few attribute
reads and no store call at all.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from tokenway.stores.base import Admission, Bucket, BudgetLine, Reservation, Slot

_MINUTE = 60.0


# The classes below are dataclasses for their slots: mypyc, which compiles this module for the
# deployment wheel (setup.py), refuses a class's own ``__slots__`` but keeps a dataclass's.


@dataclass(slots=True)
class _Bucket:
    """When the bucket will be full again (``time.monotonic()`` seconds; in the past: it is full)."""

    full_at: float = 0.0


@dataclass(slots=True)
class _Money:
    """Nano-dollars committed on one budget counter (spent, or reserved by requests in flight)."""

    used: int = 0


@dataclass(slots=True, init=False, eq=False)
class Cells:
    """The state of one set of buckets, a concurrency slot and budget lines, taken from directly.

    ``take`` and ``reserve`` together are the atomic admission (the caller does not await between
    them); ``acquire`` after a ``take`` that said no says why; ``settle`` is the request's end.
    """

    # (state, seconds one unit takes to refill, whether the request's tokens are taken or one request)
    _entries: list[tuple[_Bucket, float, bool]]
    _token_entries: list[tuple[_Bucket, float]]
    _slot: dict[str, float] | None  # member -> lease expiry, when a slot limits requests in flight
    _slot_limit: int
    _money: list[tuple[_Money, int]]  # (counter, limit) per budget line

    def __init__(
        self,
        buckets: Sequence[Bucket],
        states: list[_Bucket],
        slot: dict[str, float] | None,
        slot_limit: int,
        money: list[tuple[_Money, int]],
    ) -> None:
        self._entries = [(s, _MINUTE / b.capacity, b.kind == "tokens") for s, b in zip(states, buckets, strict=True)]
        self._token_entries = [(s, per_unit) for s, per_unit, by_tokens in self._entries if by_tokens]
        self._slot = slot
        self._slot_limit = slot_limit
        self._money = money

    def take(self, tokens: int, now: float, member: str | None = None, ttl_s: float = 3600.0) -> list[float] | None:
        """Take one from every ``requests`` bucket, ``tokens`` from every ``tokens`` bucket and a place
        in the slot for ``member``, or nothing (None: ``refusal`` says why). Returns each bucket's level
        after the take."""
        horizon = now + _MINUTE
        levels: list[float] = []
        for state, per_unit, by_tokens in self._entries:  # one loop, no calls: this runs on every request
            full = state.full_at
            if full < now:
                full = now
            full += tokens * per_unit if by_tokens else per_unit
            if full > horizon:
                self._untake(len(levels), tokens)
                return None
            state.full_at = full
            levels.append((horizon - full) / per_unit)
        if member is not None:
            held = self._slot
            assert held is not None
            if len(held) >= self._slot_limit:
                for gone in [m for m, expiry in held.items() if expiry <= now]:
                    del held[gone]
                if len(held) >= self._slot_limit:
                    self._untake(len(levels), tokens)
                    return None
            held[member] = now + ttl_s
        return levels

    def _untake(self, count: int, tokens: int) -> None:
        # A refused take gives back what it took from the first ``count`` buckets. A bucket that was full
        # before is left full as of now, which is the same level.
        for state, per_unit, by_tokens in self._entries[:count]:
            state.full_at -= tokens * per_unit if by_tokens else per_unit

    def reserve(self, amount: int) -> int | None:
        """Reserve ``amount`` on every budget line if it fits all of them; else nothing, and the index of
        the first line it does not fit."""
        for i, (counter, limit) in enumerate(self._money):
            used = counter.used + amount
            if used > limit:
                for taken, _ in self._money[:i]:
                    taken.used -= amount
                return i
            counter.used = used
        return None

    def refusal(self, tokens: int, now: float) -> Admission:
        """Why ``take`` refused (nothing was taken): the first bucket short, or the slot, with the
        levels before the request (what the headers report)."""
        before: list[float] = []
        shorts: list[float] = []
        for state, per_unit, by_tokens in self._entries:
            before.append((now + _MINUTE - max(state.full_at, now)) / per_unit)
            shorts.append((tokens if by_tokens else 1) - before[-1])
        first = next((i for i, short in enumerate(shorts) if short > 0), None)
        if first is None and self._slot is None:  # short by a rounding error only: the tightest bucket
            first = max(range(len(shorts)), key=shorts.__getitem__)
        if first is None:
            return Admission(len(self._entries), 1.0, before)
        return Admission(first, max(shorts[first], 0.0) * self._entries[first][1], before)

    async def acquire(self, tokens: int, slot: Slot | None, reservation: Reservation | None) -> Admission:
        """The whole admission as one store call: the take (with the slot's member), the budget if it
        fits, or why not (``refusal``). Nothing awaits, so it is atomic too."""
        now = time.monotonic()
        levels = self.take(tokens, now, None if slot is None else slot.member, 0 if slot is None else slot.ttl_s)
        if levels is None:
            return self.refusal(tokens, now)
        return Admission(None, 0.0, levels, reservation is not None and self.reserve(reservation.amount) is None)

    def settle(self, member: str | None, delta: int, money: int = 0) -> None:
        """The request is over: free its place in the slot, take ``delta`` more tokens from the
        ``tokens`` buckets (give back when negative; in debt by at most a minute's capacity), and move
        every budget line by ``money``."""
        if member is not None and self._slot is not None:
            self._slot.pop(member, None)
        if delta:
            now = time.monotonic()
            most = now + 2 * _MINUTE
            for state, per_unit in self._token_entries:
                full = state.full_at
                if full < now:
                    full = now
                full += delta * per_unit
                state.full_at = full if full < most else most
        if money:
            for counter, _ in self._money:
                counter.used += money


class MemoryCounters:
    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._slots: dict[str, dict[str, float]] = {}  # key -> member -> lease expiry
        self._budgets: dict[str, _Money] = {}
        self.settle_failures = 0  # settles apply at once and cannot fail

    def cells(
        self, buckets: Sequence[Bucket], slot: tuple[str, int] | None = None, lines: Sequence[BudgetLine] = ()
    ) -> Cells:
        states = [self._buckets.setdefault(b.key, _Bucket()) for b in buckets]
        held = None if slot is None else self._slots.setdefault(slot[0], {})
        money = [(self._budgets.setdefault(line.key, _Money()), line.limit) for line in lines]
        return Cells(buckets, states, held, 0 if slot is None else slot[1], money)

    async def acquire(
        self, buckets: Sequence[Bucket], tokens: int, slot: Slot | None = None, reservation: Reservation | None = None
    ) -> Admission:
        cells = self.cells(buckets, None if slot is None else (slot.key, slot.limit),
                           () if reservation is None else reservation.lines)
        return await cells.acquire(tokens, slot, reservation)

    def finish(
        self, slot: Slot | None, buckets: Sequence[Bucket], delta: int, lines: Sequence[BudgetLine] = (), money: int = 0
    ) -> None:
        cells = self.cells(buckets, None if slot is None else (slot.key, slot.limit), lines)
        cells.settle(None if slot is None else slot.member, delta, money)

    async def reserve(self, lines: list[BudgetLine], amount: int) -> tuple[int | None, int]:
        full = self.cells((), None, lines).reserve(amount)
        return (None, 0) if full is None else (full, self._budgets[lines[full].key].used)

    def settle(self, lines: list[BudgetLine], delta: int) -> None:
        self.finish(None, (), 0, lines, delta)

    async def committed(self, line: BudgetLine) -> int:
        counter = self._budgets.get(line.key)
        return 0 if counter is None else counter.used

    async def seed(self, line: BudgetLine, amount: int) -> None:
        self._budgets.setdefault(line.key, _Money(amount))

    async def aclose(self) -> None:
        return None
