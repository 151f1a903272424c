"""Counters shared by every gateway process through Redis: each admission is one Lua script.

Scripts read the clock with ``TIME`` on the Redis server, so replicas on hosts with skewed clocks
still agree on a bucket's level. What requests give back when they end is merged per counter and
sent as one script call per event-loop turn, which no request waits for. A dead Redis costs at
most a timeout: after three failures in a row, ``CountersUnavailable`` is raised at once for a
second, and the access policy fails open or closed. The counters need one Redis endpoint (a single
node, or a managed primary behind one address), not Redis Cluster.

A request far from its limits need not wait for Redis at all: the script call that admits it also
takes a *share* for this process, up to ``LEASE_MOST`` more units of the same ask (one request, its
tokens, its amount), never more than 1/``LEASE_FRACTION`` of what any counter has left. Later asks
of the same shape spend a unit in process; what a share has not spent after ``LEASE_TTL_S`` goes
back. Every unit was taken atomically, so nothing can be overspent; near a limit nothing is leased,
so the last requests a bucket or budget allows are decided one by one; an ask with a concurrency
slot is never leased. What this trades (an early refusal while another process holds units, a
crashed process's units spent until the period ends) is in ``benchmarks/budgets/LEASE.md``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tokenway.stores.counters import Ask, BudgetLine, CountersUnavailable, Decision

# A bucket's level now (refilled at capacity per minute, never above it), on Redis's clock in ms.
_LEVEL = """
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function level_of(key, cap, now)
  local h = redis.call('HMGET', key, 't', 'ts')
  if not h[1] then return cap end
  return math.min(cap, tonumber(h[1]) + (now - tonumber(h[2])) * cap / 60000.0)
end
local function store(key, level, now, ttl_ms)
  redis.call('HSET', key, 't', tostring(level), 'ts', now)
  redis.call('PEXPIRE', key, ttl_ms)
end
"""

# KEYS: n buckets, the slot if s = 1, then the budget lines. ARGV: n, s, most, fraction, (capacity,
# cost) per bucket, (limit, member, ttl ms) if s = 1, the amount, (limit, ttl s) per line. Everything
# is taken, or nothing; when it is, up to ``most`` more of the same are taken for the caller's share,
# at most 1/fraction of what any counter has left after the first. Returns {denied (1-based bucket,
# n + 1: the slot), retry ms, full line (1-based), its committed, how many more were taken, level per
# bucket (after the first take alone; before it when refused)}.
_ADMIT = _LEVEL + """
local now = clock()
local n, s, most, fraction = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local levels, denied, retry = {}, 0, 0
for i = 1, n do
  local cap, cost = tonumber(ARGV[3 + 2 * i]), tonumber(ARGV[4 + 2 * i])
  levels[i] = level_of(KEYS[i], cap, now)
  if denied == 0 and levels[i] < cost then denied = i; retry = math.ceil((cost - levels[i]) * 60000.0 / cap) end
  if cost > 0 then most = math.min(most, math.floor((levels[i] - cost) / (fraction * cost))) end
end
local a = 5 + 2 * n
if s == 1 and denied == 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[n + 1], '-inf', now)
  if redis.call('ZCARD', KEYS[n + 1]) >= tonumber(ARGV[a]) then denied = n + 1; retry = 1000 end
end
local b = a + 3 * s
local amount, full, committed = tonumber(ARGV[b]), 0, 0
if denied == 0 then
  for i = n + s + 1, #KEYS do
    local used, limit = tonumber(redis.call('GET', KEYS[i]) or '0'), tonumber(ARGV[b - 1 + 2 * (i - n - s)])
    if full == 0 and used + amount > limit then full = i - n - s; committed = used end
    if amount > 0 then most = math.min(most, math.floor((limit - used - amount) / (fraction * amount))) end
  end
end
if denied ~= 0 or full ~= 0 or most < 0 then most = 0 end
if denied == 0 and full == 0 then
  for i = 1, n do
    levels[i] = levels[i] - tonumber(ARGV[4 + 2 * i]) * (1 + most)
    store(KEYS[i], levels[i], now, 120000)
  end
  if s == 1 then
    local ttl = tonumber(ARGV[a + 2])
    redis.call('ZADD', KEYS[n + 1], now + ttl, ARGV[a + 1])
    redis.call('PEXPIRE', KEYS[n + 1], ttl)
  end
  for i = n + s + 1, #KEYS do
    redis.call('INCRBY', KEYS[i], amount * (1 + most))
    local ttl = tonumber(ARGV[b + 2 * (i - n - s)])
    if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
  end
end
local out = {denied, retry, full, committed, most}
for i = 1, n do out[5 + i] = math.floor(levels[i] + most * tonumber(ARGV[4 + 2 * i])) end
return out
"""

# Requests are over (and shares given back): everything settled during one event-loop turn, merged
# per counter. KEYS: n buckets, m slots, then budget lines. ARGV: n, m, (capacity, requests or tokens
# to take) per bucket, member per slot, nano-dollars per line. Tokens counted after the fact go into a
# bucket even below zero (by at most a minute's capacity).
_SETTLE = _LEVEL + """
local n, m = tonumber(ARGV[1]), tonumber(ARGV[2])
if n > 0 then
  local now = clock()
  for i = 1, n do
    local cap, delta = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
    store(KEYS[i], math.max(level_of(KEYS[i], cap, now) - delta, -cap), now, 180000)
  end
end
for j = 1, m do redis.call('ZREM', KEYS[n + j], ARGV[2 + 2 * n + j]) end
for k = n + m + 1, #KEYS do redis.call('INCRBY', KEYS[k], ARGV[2 + n + k]) end
return 1
"""

_OUTAGES = (OSError, RedisConnectionError, RedisTimeoutError)
MAX_CONNECTIONS = 16  # per process: scripts are short, and settles are merged per loop turn
SLOT_TTL_MS = 3_600_000  # a request that never settles gives its place in the slot back after an hour
LEASE_MOST = 128  # a share is at most this many units ...
LEASE_FRACTION = 64  # ... and at most 1/64 of what any counter has left: near a limit, nothing is leased
LEASE_TTL_S = 1.0  # what a share has not spent by then goes back


class RedisCounters:
    def __init__(self, url: str, prefix: str = "tokenway:", timeout_s: float = 1.0, pause_s: float = 1.0) -> None:
        # Callers beyond the pool's connections wait for one (a timeout there counts as an outage).
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=timeout_s, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        self._redis = redis.asyncio.Redis(connection_pool=pool)
        self._admit = self._redis.register_script(_ADMIT)
        self._settle = self._redis.register_script(_SETTLE)
        self._prefix = prefix
        self._pause_s = pause_s
        self._down_until = 0.0
        self._failures_in_a_row = 0  # one slow answer under load is not an outage
        self._pending = _Settles()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._shares: dict[tuple[str, ...], _Share] = {}  # by the ask's shape: its bucket and line keys
        self._renewals: dict[tuple[str, ...], asyncio.Future[tuple[Decision, int]]] = {}  # script calls on their way
        self.failures = 0

    async def admit(self, ask: Ask) -> Decision:
        if ask.slot is not None:  # Redis decides every request that takes a place in a slot
            return (await self._take(ask, 0))[0]
        shape = (*(b.key for b in ask.buckets), *(line.key for line in ask.lines))
        while True:
            share = self._shares.get(shape)
            if share is not None and share.units and ask.tokens <= share.ask.tokens and ask.amount <= share.ask.amount:
                return self._spend(share, ask)
            renewal = self._renewals.get(shape)
            if renewal is None:
                break
            # Requests arriving while a call renews the share wait for it rather than each calling Redis.
            if not (await asyncio.shield(renewal))[1]:  # nothing leased: near a limit, Redis decides each
                return (await self._take(ask, 0))[0]
        renewal = self._renewals[shape] = asyncio.ensure_future(self._renew(shape, ask))
        try:
            return (await asyncio.shield(renewal))[0]  # the share arrives even if this request is cancelled
        except asyncio.CancelledError:
            renewal.add_done_callback(partial(self._abandoned, ask))
            raise

    def _spend(self, share: _Share, ask: Ask) -> Decision:
        share.units -= 1
        spent, unit = share.granted - share.units, share.ask
        # What the unit holds beyond this ask goes back, so the ask settles as if Redis had admitted it.
        self._owe(ask, 0, ask.tokens - unit.tokens, ask.amount - unit.amount)
        return Decision([level - spent * (unit.tokens if b.kind == "tokens" else 1)
                         for b, level in zip(ask.buckets, share.levels, strict=True)])

    async def _renew(self, shape: tuple[str, ...], ask: Ask) -> tuple[Decision, int]:
        try:
            decision, granted = await self._take(ask, LEASE_MOST)
        finally:
            del self._renewals[shape]
        if granted:
            old = self._shares.get(shape)
            if old is not None:
                self._end(shape, old)
            self._shares[shape] = share = _Share(ask, granted, granted, decision.levels)
            asyncio.get_running_loop().call_later(LEASE_TTL_S, self._end, shape, share)
        return decision, granted

    def _abandoned(self, ask: Ask, renewal: asyncio.Future[tuple[Decision, int]]) -> None:
        """The request whose call renewed a share was cancelled meanwhile: what Redis took for it goes back."""
        if not renewal.cancelled() and renewal.exception() is None and renewal.result()[0].admitted:
            self._owe(ask, -1, -ask.tokens, -ask.amount)

    def _end(self, shape: tuple[str, ...], share: _Share) -> None:
        """The share is over (expired, replaced, or the store closes): its units go back with the next settle."""
        if self._shares.get(shape) is share:
            del self._shares[shape]
        units, share.units = share.units, 0
        if units:
            self._owe(share.ask, -units, -units * share.ask.tokens, -units * share.ask.amount)

    async def _take(self, ask: Ask, most: int) -> tuple[Decision, int]:
        """The admit script: the decision, and how many more units it took for this process's share."""
        p = self._prefix
        keys = [p + b.key for b in ask.buckets]
        args: list[Any] = [len(ask.buckets), 0 if ask.slot is None else 1, most, LEASE_FRACTION]
        for bucket in ask.buckets:
            args += (bucket.capacity, ask.tokens if bucket.kind == "tokens" else 1)
        if ask.slot is not None:
            keys.append(p + ask.slot)
            args += (ask.slot_limit, ask.member, SLOT_TTL_MS)
        args.append(ask.amount)
        for line in ask.lines:
            keys.append(p + line.key)
            args += (line.limit, line.ttl_s)
        denied, retry_ms, full, committed, more, *levels = await self._call(self._admit(keys=keys, args=args))
        return Decision(
            [float(level) for level in levels], denied=int(denied) - 1 if denied else None,
            retry_after=int(retry_ms) / 1000.0, budget_full=int(full) - 1 if full else None, committed=int(committed),
        ), int(more)

    def settle(self, ask: Ask, tokens: int, money: int) -> None:
        if ask.slot is not None:
            self._pending.slots.append((ask.slot, ask.member))
        self._owe(ask, 0, tokens, money)

    def _owe(self, ask: Ask, requests: int, tokens: int, money: int) -> None:
        """Queue for the next settle call: ``requests`` more from the ask's requests buckets, ``tokens``
        from its tokens buckets, ``money`` on its budget lines (less than zero: given back)."""
        pending = self._pending
        for bucket in ask.buckets:
            more = requests if bucket.kind == "requests" else tokens
            if more:
                _, owed = pending.tokens.get(bucket.key, (0, 0))
                pending.tokens[bucket.key] = (bucket.capacity, owed + more)
        if money:
            for line in ask.lines:
                pending.money[line.key] = pending.money.get(line.key, 0) + money
        if pending and not pending.scheduled:
            pending.scheduled = True
            asyncio.get_running_loop().call_soon(self._send_settles)

    def _send_settles(self) -> None:
        batch, self._pending = self._pending, _Settles()
        if batch:
            task = asyncio.ensure_future(self._send(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _send(self, batch: _Settles) -> None:
        p = self._prefix
        keys = [p + key for key in (*batch.tokens, *(slot for slot, _ in batch.slots), *batch.money)]
        args: list[Any] = [len(batch.tokens), len(batch.slots)]
        for capacity, owed in batch.tokens.values():
            args += (capacity, owed)
        args += [member for _, member in batch.slots]
        args += batch.money.values()
        try:
            await self._call(self._settle(keys=keys, args=args))
        except CountersUnavailable:
            self.failures += 1  # settles mostly give back (holds are the worst case): lost ones err strict

    async def committed(self, line: BudgetLine) -> int:
        return int(await self._call(self._redis.get(self._prefix + line.key)) or 0)

    async def seed(self, line: BudgetLine, amount: int) -> None:
        # Redis keeps its own counters; the ledger only seeds one Redis has lost (e.g. after a flush).
        await self._call(self._redis.set(self._prefix + line.key, amount, nx=True, ex=line.ttl_s or None))

    async def _call(self, command: Any) -> Any:
        if time.monotonic() < self._down_until:
            command.close()  # the coroutine is never awaited
            raise CountersUnavailable("Redis was unreachable a moment ago")
        try:
            result = await command
        except _OUTAGES as exc:
            self._failures_in_a_row += 1
            if self._failures_in_a_row >= 3:  # a dead Redis costs one timeout per pause, not per request
                self._down_until = time.monotonic() + self._pause_s
            raise CountersUnavailable(f"Redis is unreachable: {exc!r}") from exc
        self._failures_in_a_row = 0
        return result

    async def flush(self) -> None:
        """Send the settles not sent yet and wait until Redis has applied every one sent so far."""
        self._send_settles()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def aclose(self) -> None:
        await asyncio.gather(*self._renewals.values(), return_exceptions=True)
        for shape, share in list(self._shares.items()):
            self._end(shape, share)
        await self.flush()
        await self._redis.aclose()


@dataclass(slots=True)
class _Share:
    """Units this process took for one ask shape: each is what ``ask`` took (a request, its tokens from
    every tokens bucket, its amount on every budget line). ``levels``: the buckets' after that ask."""

    ask: Ask
    units: int  # not spent yet
    granted: int
    levels: list[float]


class _Settles:
    """Settles not sent yet, merged per counter."""

    def __init__(self) -> None:
        self.tokens: dict[str, tuple[int, int]] = {}  # bucket -> (capacity, requests or tokens to take)
        self.slots: list[tuple[str, str]] = []  # (slot, member) to free
        self.money: dict[str, int] = {}  # budget line -> nano-dollars to add
        self.scheduled = False

    def __bool__(self) -> bool:
        return bool(self.tokens or self.slots or self.money)
