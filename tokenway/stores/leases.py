"""A process's lease on shared counters: a share of their requests, tokens and money, taken from
Redis in one atomic step and spent in process.

Without it a request far from its limits makes a Redis round trip to take one request and a few
hundred tokens from buckets that hold millions. With it, the script call that admits a request
whose buckets and budgets hold at least ``FRACTION`` times what it needs also takes up to
``MOST_REQUESTS`` more requests' worth of each (never more than 1/``FRACTION`` of what is left)
for this process. The next requests take from that share with no store call, as they do from the
embedded counters, and their settles go back into it. A share lasts ``TTL_S``: then what is left of
it (or owed, when requests used more tokens than estimated) goes back to Redis, with the renewal
that the next request makes or with the sweep that ``RedisCounters`` runs.

What that does and does not change:

- Overspending stays impossible: every share was taken atomically and counts as spent in Redis.
- Near a limit (less than ``FRACTION`` times the request's need left) nothing is leased: every
  request is decided by Redis as before, so the last requests a budget or a bucket allows are
  exact.
- A process can refuse early while another holds an unused share (at most 1/``FRACTION`` of what
  was left, for at most ``TTL_S``).
- A crashed process's unused share counts as spent until the bucket refills (a minute) or the
  budget's period ends.
- ``x-ratelimit-remaining-*`` is the shared level at the last renewal plus the share not spent yet.
- Concurrency slots are not leased: a plan with one asks Redis on every request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from tokenway.stores.base import Admission, Bucket, BudgetLine, Reservation, Slot

if TYPE_CHECKING:  # redis.py makes these cells
    from tokenway.stores.redis import RedisCounters

FRACTION = 64  # a share is at most 1/64 of what a counter has left, and only when that is a whole request
MOST_REQUESTS = 128  # and at most this many requests' worth
TTL_S = 1.0  # a share unused for this long goes back


class _Share:
    """This process's share of one counter: what is left of it (units: requests, tokens or nano-dollars;
    below zero while settles owe more than was taken), and for a bucket its shared level at the grant."""

    __slots__ = ("by_tokens", "left", "level")

    def __init__(self, by_tokens: bool = False) -> None:
        self.by_tokens = by_tokens
        self.left = 0
        self.level = 0


class LeaseCells:
    """A plan's lease on its shared buckets and budget lines. ``take`` and ``reserve`` spend the share
    (None / an index when it does not cover the request: ``acquire`` then asks Redis, renewing the
    share on the way); ``settle`` puts the request's end into the share while the share lasts."""

    __slots__ = ("_buckets", "_counters", "_lines", "_money", "_renewal", "_shares", "_slot", "_token_buckets",
                 "_waiting", "until")

    def __init__(
        self,
        counters: RedisCounters,
        buckets: Sequence[Bucket],
        slot: tuple[str, int] | None,
        lines: Sequence[BudgetLine],
    ) -> None:
        self._counters = counters
        self._buckets = buckets
        self._token_buckets = [b for b in buckets if b.kind == "tokens"]
        self._lines = lines
        self._shares = [_Share(b.kind == "tokens") for b in buckets]
        self._money = [_Share() for _ in lines]
        self._slot = slot  # (key, limit): Redis decides every request, so nothing is leased
        self._renewal: asyncio.Future[Admission] | None = None  # the script call renewing the share
        self._waiting: list[asyncio.Future[None]] = []  # one future per request waiting for that call
        self.until = 0.0  # monotonic time the share lasts until (0: none)

    def take(self, tokens: int, now: float, member: str | None = None) -> list[float] | None:
        """Take one request and ``tokens`` from the share of every bucket; returns each bucket's level
        for the headers, or None (nothing taken) when the share is gone or too small."""
        if now >= self.until:
            return None
        levels: list[float] = []
        for share in self._shares:
            left = share.left - (tokens if share.by_tokens else 1)
            if left < 0:
                for taken in self._shares[: len(levels)]:
                    taken.left += tokens if taken.by_tokens else 1
                return None
            share.left = left
            levels.append(share.level + left)
        return levels

    def reserve(self, amount: int) -> int | None:
        """Reserve ``amount`` from the share of every budget line, or nothing and the index of the first
        line short; a short share is renewed by the next request (the caller reserves through Redis)."""
        for i, share in enumerate(self._money):
            if share.left < amount:
                for taken in self._money[:i]:
                    taken.left += amount
                self.until = 0.0
                return i
            share.left -= amount
        return None

    async def acquire(self, tokens: int, slot: Slot | None, reservation: Reservation | None) -> Admission:
        """What the share does not cover, Redis decides, in the call that renews the share. Requests
        arriving while that call is on its way wait for it and spend the new share, rather than each
        making a call of its own."""
        renewal = self._renewal
        if renewal is not None:
            # Each waits on a future of its own: a request cancelled here cancels neither the renewal nor
            # the others' wait (and this costs a third of what asyncio.wait does).
            waiter = renewal.get_loop().create_future()
            self._waiting.append(waiter)
            await waiter
            levels = self.take(tokens, time.monotonic())
            if levels is not None:
                held = reservation is not None and self.reserve(reservation.amount) is None
                return Admission(None, 0.0, levels, held)
        elif self._slot is None:
            renewal = self._renewal = asyncio.ensure_future(
                self._counters.acquire(self._buckets, tokens, slot, reservation, self, MOST_REQUESTS))
            renewal.add_done_callback(self._renewed)
            try:
                return await asyncio.shield(renewal)  # the share arrives even if this request is cancelled
            except asyncio.CancelledError:
                renewal.add_done_callback(partial(self._abandoned, tokens, reservation))
                raise
        return await self._counters.acquire(self._buckets, tokens, slot, reservation, self)

    def _renewed(self, renewal: asyncio.Future[Admission]) -> None:
        """The call is back (or failed): the requests waiting for it try the new share."""
        self._renewal = None
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if not waiter.done():  # a cancelled request's
                waiter.set_result(None)

    def _abandoned(
        self, tokens: int, reservation: Reservation | None, renewal: asyncio.Future[Admission]
    ) -> None:
        """The request whose call renewed the share was cancelled meanwhile: what Redis took for it
        goes back (the share itself stays)."""
        if renewal.cancelled() or renewal.exception() is not None or renewal.result().denied is not None:
            return
        amount = reservation.amount if reservation is not None and renewal.result().held else 0
        self._counters.finish(None, [b for b in self._buckets if b.kind == "requests"], -1)
        self._counters.finish(None, self._token_buckets, -tokens, self._lines, -amount)

    def settle(self, member: str | None, delta: int, money: int = 0) -> None:
        """The request is over: ``delta`` more tokens and ``money`` more nano-dollars go into the share
        while it lasts, else to Redis with the slot (``RedisCounters.finish``)."""
        if member is None and time.monotonic() < self.until:
            if delta:
                for share in self._shares:
                    if share.by_tokens:
                        share.left -= delta
            if money:
                for share in self._money:
                    share.left -= money
        elif member is not None or money or (delta and self._token_buckets):
            slot = None if member is None or self._slot is None else Slot(self._slot[0], self._slot[1], member)
            self._counters.finish(slot, self._token_buckets, delta, self._lines, money)

    # Renewal, called by RedisCounters around the script call.

    def give_back(self, with_money: bool) -> tuple[list[int], list[int]]:
        """What the share has left per bucket (and per budget line, when the call reserves money),
        handed to the script call and zeroed here: the script adds it back before it takes."""
        buckets = [share.left for share in self._shares]
        for share in self._shares:
            share.left = 0
        money = [share.left for share in self._money] if with_money else []
        if with_money:
            for share in self._money:
                share.left = 0
        return buckets, money

    def lost(self, buckets: list[int], money: list[int]) -> None:
        """The call failed, and may or may not have been applied: debts are kept (they are paid with the
        next renewal), what was left is not (were it applied twice, a budget could overspend)."""
        for share, left in zip(self._shares, buckets, strict=False):
            share.left += min(left, 0)
        for share, left in zip(self._money, money, strict=False):
            share.left += min(left, 0)

    def granted(self, requests: int, tokens: int, amount: int, levels: list[int], now: float) -> list[float]:
        """The script call took ``requests`` more requests' worth for this process (``amount``: the money
        one request reserved, 0 when none was); ``levels`` are the buckets' shared levels after it.
        Returns the levels the headers report."""
        if requests:
            for share, level in zip(self._shares, levels, strict=True):
                share.left += requests * (tokens if share.by_tokens else 1)
                share.level = level
            for share in self._money:
                share.left += requests * amount
            self.until = now + TTL_S
        if not requests:
            return list(levels)
        return [share.level + share.left for share in self._shares]

    def returned(self) -> tuple[list[tuple[Bucket, int]], list[tuple[BudgetLine, int]]]:
        """The share ends (``RedisCounters``' sweep): what it had left per counter, zeroed here."""
        buckets, money = self.give_back(True)
        self.until = 0.0
        return list(zip(self._buckets, buckets, strict=True)), list(zip(self._lines, money, strict=True))
