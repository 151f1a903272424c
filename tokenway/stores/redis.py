"""Counters shared by every gateway process through Redis: each check-and-take is one Lua script.

Scripts read the clock with ``TIME`` on the Redis server, so replicas on hosts with skewed
clocks still agree on a bucket's level. The client has short socket timeouts and a bounded pool
of its own (the app's shared client may be used for blocking calls): a dead Redis costs at most
a timeout; after three failures in a row ``CountersUnavailable`` is raised at once for a second,
and the caller fails open or closed. Multi-key scripts keep all of a request's keys in one slot-free namespace; on Redis
Cluster give the prefix a hash tag (``{tokenway}:``).
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tokenway.stores.base import Admission, Bucket, BudgetLine, CountersUnavailable, Slot

# KEYS: n bucket keys, then the slot key if any. ARGV: n, (capacity, cost) * n, slot limit, member, ttl ms.
# Returns {denied (0: none, 1-based index), retry ms, (remaining, ms until full) * n}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local levels, denied, retry = {}, 0, 0
for i = 1, n do
  local cap, cost = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local rate = cap / 60000.0
  local s = redis.call('HMGET', KEYS[i], 't', 'ts')
  local level = cap
  if s[1] then level = math.min(cap, tonumber(s[1]) + (now - tonumber(s[2])) * rate) end
  levels[i] = level
  if denied == 0 and level < cost then denied = i; retry = math.ceil((cost - level) / rate) end
end
if denied == 0 and #KEYS > n then
  local key, limit, ttl = KEYS[n + 1], tonumber(ARGV[2 * n + 2]), tonumber(ARGV[2 * n + 4])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= limit then
    denied = n + 1; retry = 1000
  else
    redis.call('ZADD', key, now + ttl, ARGV[2 * n + 3])
    redis.call('PEXPIRE', key, ttl)
  end
end
local out = {denied, retry}
for i = 1, n do
  local cap = tonumber(ARGV[2 * i])
  if denied == 0 then
    levels[i] = levels[i] - tonumber(ARGV[2 * i + 1])
    redis.call('HSET', KEYS[i], 't', tostring(levels[i]), 'ts', now)
    redis.call('PEXPIRE', KEYS[i], 60000 * 2)
  end
  out[#out + 1] = math.max(0, math.floor(levels[i]))
  out[#out + 1] = math.ceil((cap - levels[i]) * 60000.0 / cap)
end
return out
"""

# KEYS: bucket. ARGV: capacity, delta. Tokens spent after the fact; the debt is bounded by one minute.
_ADJUST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap, delta = tonumber(ARGV[1]), tonumber(ARGV[2])
local s = redis.call('HMGET', KEYS[1], 't', 'ts')
local level = cap
if s[1] then level = math.min(cap, tonumber(s[1]) + (now - tonumber(s[2])) * cap / 60000.0) end
level = math.max(level - delta, -cap)
redis.call('HSET', KEYS[1], 't', tostring(level), 'ts', now)
redis.call('PEXPIRE', KEYS[1], 60000 * 3)
return 1
"""

# KEYS: budget counters. ARGV: amount, (limit, ttl s) per key. All or nothing.
_RESERVE = """
local amount = tonumber(ARGV[1])
for i = 1, #KEYS do
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  if used + amount > tonumber(ARGV[2 * i]) then return {i, used} end
end
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], amount)
  local ttl = tonumber(ARGV[2 * i + 1])
  if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
end
return {0, 0}
"""

_FAILURES = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class RedisCounters:
    def __init__(
        self, url: str, prefix: str = "tokenway:", timeout_s: float = 1.0, pause_s: float = 1.0,
        max_connections: int = 64,
    ) -> None:
        # A bounded pool: a burst of requests queues for a connection (at most ``timeout_s``) instead of
        # opening hundreds of sockets at once, which is what makes Redis slow under a burst.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout_s, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, health_check_interval=0,
        )
        # No client-side retries: a retry after a timeout doubles the wait; the caller decides instead.
        self._redis = redis.asyncio.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        self._prefix = prefix
        self._pause_s = pause_s
        self._down_until = 0.0
        self._failures = 0  # in a row: one slow answer under load is not an outage
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._adjust = self._redis.register_script(_ADJUST)
        self._reserve = self._redis.register_script(_RESERVE)

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        if time.monotonic() < self._down_until:
            raise CountersUnavailable("Redis was unreachable a moment ago")
        return await self._call(script(keys=[self._prefix + k for k in keys], args=args))

    async def acquire(self, buckets: list[Bucket], slot: Slot | None) -> Admission:
        keys = [b.key for b in buckets]
        args: list[Any] = [len(buckets)]
        for bucket in buckets:
            args += [bucket.capacity, bucket.cost]
        if slot is not None:
            keys.append(slot.key)
            args += [slot.limit, slot.member, slot.ttl_s * 1000]
        raw = await self._run(self._acquire, keys, args)
        denied = int(raw[0])
        levels = raw[2:]
        return Admission(
            denied=denied - 1 if denied else None,
            retry_after=int(raw[1]) / 1000.0,
            remaining=[int(v) for v in levels[0::2]],
            reset_s=[int(v) / 1000.0 for v in levels[1::2]],
        )

    async def finish(self, slot: Slot | None, adjustments: list[tuple[Bucket, int]]) -> None:
        if slot is None and not adjustments:
            return
        async with self._redis.pipeline(transaction=False) as pipe:  # one round trip for all of it
            if slot is not None:
                pipe.zrem(self._prefix + slot.key, slot.member)
            for bucket, delta in adjustments:
                # queued
                await self._adjust(keys=[self._prefix + bucket.key], args=[bucket.capacity, delta], client=pipe)
            await self._call(pipe.execute())

    async def reserve(self, lines: list[BudgetLine], amount: int) -> tuple[int | None, int]:
        args: list[Any] = [amount]
        for line in lines:
            args += [line.limit, line.ttl_s]
        index, used = await self._run(self._reserve, [line.key for line in lines], args)
        return (int(index) - 1 if index else None), int(used)

    async def settle(self, lines: list[BudgetLine], delta: int) -> None:
        if delta == 0:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for line in lines:
                pipe.incrby(self._prefix + line.key, delta)
            await self._call(pipe.execute())

    async def committed(self, line: BudgetLine) -> int:
        value = await self._call(self._redis.get(self._prefix + line.key))
        return int(value or 0)

    async def seed(self, line: BudgetLine, amount: int) -> None:
        # Redis keeps its own counters; the ledger only seeds a counter Redis has lost (e.g. after a flush).
        await self._call(self._redis.set(self._prefix + line.key, amount, nx=True, ex=line.ttl_s or None))

    async def _call(self, awaitable: Any) -> Any:
        if time.monotonic() < self._down_until:
            awaitable.close()
            raise CountersUnavailable("Redis was unreachable a moment ago")
        try:
            result = await awaitable
        except _FAILURES as exc:
            self._failures += 1
            if self._failures >= 3:
                # Pause before trying again so that a dead Redis costs one timeout per second, not per request.
                self._down_until = time.monotonic() + self._pause_s
            raise CountersUnavailable(f"Redis is unreachable: {exc!r}") from exc
        self._failures = 0
        return result

    async def aclose(self) -> None:
        await self._redis.aclose()
