"""Counters shared by every gateway process through Redis: each check-and-take is one Lua script.

Scripts read the clock with ``TIME`` on the Redis server, so replicas on hosts with skewed
clocks still agree on a bucket's level. A request makes at most one call of its own: one script
takes from the buckets and reserves the budget (a second call only when a fallback needs more
money), on one pipelined connection (``redis_pipe``). Far from its limits it makes none: the call
also takes a share for this process (``leases``), and the next requests spend it in process.
What requests give back when they end is merged per counter and sent as one script per
event-loop turn, which no request waits for. A dead
Redis costs at most a timeout; after three failures in a row ``CountersUnavailable`` is raised
at once for a second, and the caller fails open or closed.
The counters need one Redis endpoint (a single node, or a managed primary behind one address):
the connection does not follow Redis Cluster's MOVED redirects.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tokenway.stores.base import Admission, Bucket, BudgetLine, CountersUnavailable, Reservation, Slot
from tokenway.stores.leases import FRACTION, TTL_S, LeaseCells
from tokenway.stores.redis_pipe import PipelinedRedis, Script

# What the scripts share: Redis's clock in ms, a bucket's level now (refilled at capacity per
# minute, never above it) and writing it back, and the budget reservation.
_COMMON_LUA = """
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
-- Budget counters KEYS[k..]; ARGV[a]: the amount, then (limit, ttl s, back) per counter. Each is given
-- ``back`` first (what a process's share had left; below zero, what it owes). Then, when ``take``,
-- the amount plus ``most`` more requests' worth (fewer where a counter has less than ``fraction``
-- times that left) is reserved on every counter if the amount fits all of them, else on none.
-- Returns (1-based index of a full counter or 0, its used, the requests' worth granted).
local function reserve(k, a, take, most, fraction)
  local amount = tonumber(ARGV[a])
  local full, full_used, used = 0, 0, {}
  for i = k, #KEYS do
    local j = a + 1 + 3 * (i - k)
    used[i] = tonumber(redis.call('GET', KEYS[i]) or '0') - tonumber(ARGV[j + 2])
    local room = tonumber(ARGV[j]) - used[i] - amount
    if full == 0 and room < 0 then full, full_used = i - k + 1, used[i] end
    if amount > 0 then most = math.min(most, math.floor(room / (fraction * amount))) end
  end
  take = take and full == 0
  if not take or most < 0 then most = 0 end
  for i = k, #KEYS do
    local j = a + 1 + 3 * (i - k)
    local delta = -tonumber(ARGV[j + 2])
    if take then delta = delta + amount * (1 + most) end
    if delta ~= 0 then
      redis.call('INCRBY', KEYS[i], delta)
      local ttl = tonumber(ARGV[j + 1])
      if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
    end
  end
  return full, full_used, most
end
"""

# KEYS: n bucket keys, the slot key if s = 1, then budget counters. ARGV: n, s, most, fraction,
# (capacity, cost, back) * n, slot limit, member, ttl ms (if s = 1), then the amount and
# (limit, ttl s, back) per budget counter. ``back`` is given back before anything is taken (see
# ``reserve``); ``most``: how many more requests' worth to take for the calling process's share
# (``leases``), at most 1/fraction of what any counter has left. Returns {denied (0: none, 1-based
# index), retry ms, held (1: the budget was reserved too), requests' worth granted (none when the
# budget was asked for and did not fit), level * n}
# (levels rounded down by the reply). The budget is only tried once the buckets and the slot said yes.
_ACQUIRE = Script(_COMMON_LUA + """
local now = clock()
local n, s, most, fraction = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local levels, denied, retry = {}, 0, 0
for i = 1, n do
  local a = 2 + 3 * i
  local cap, cost = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local level = math.min(cap, level_of(KEYS[i], cap, now) + tonumber(ARGV[a + 2]))
  levels[i] = level
  if denied == 0 and level < cost then denied = i; retry = math.ceil((cost - level) * 60000.0 / cap) end
  if cost > 0 then most = math.min(most, math.floor((level - cost) / (fraction * cost))) end
end
local a = 5 + 3 * n
if s == 1 then
  if denied == 0 then
    local key, limit, ttl = KEYS[n + 1], tonumber(ARGV[a]), tonumber(ARGV[a + 2])
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    if redis.call('ZCARD', key) >= limit then
      denied = n + 1; retry = 1000
    else
      redis.call('ZADD', key, now + ttl, ARGV[a + 1])
      redis.call('PEXPIRE', key, ttl)
    end
  end
  a = a + 3
end
if most < 0 then most = 0 end
local held = 0
if #KEYS > n + s then
  local full, _, granted = reserve(n + s + 1, a, denied == 0, most, fraction)
  if denied == 0 and full == 0 then held = 1; most = granted else most = 0 end
end
local out = {denied, retry, held, denied == 0 and most or 0}
for i = 1, n do
  local cost = tonumber(ARGV[3 + 3 * i])
  if denied == 0 then
    levels[i] = levels[i] - cost * (1 + most)
    store(KEYS[i], levels[i], now, 120000)
  elseif tonumber(ARGV[4 + 3 * i]) ~= 0 then
    store(KEYS[i], levels[i], now, 120000)
  end
  out[i + 4] = math.floor(levels[i])
end
return out
""")

# KEYS: budget counters. ARGV: amount, (limit, ttl s, back) per key. All or nothing: {full (1-based), used}.
_RESERVE = Script(_COMMON_LUA + """
local full, used = reserve(1, 1, true, 0, 1)
return {full, used}
""")

# Requests are over (and processes' shares given back): everything finished during one event-loop
# turn, merged per counter. KEYS: n buckets, m slot keys, then budget counters. ARGV: n, m,
# (capacity, delta) * n, slot member * m, delta per budget counter. Tokens spent after the fact go
# into the bucket even below zero; the debt is bounded by one minute's capacity.
_SETTLE = Script(_COMMON_LUA + """
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
""")

_FAILURES = (OSError,)  # ConnectionError and TimeoutError included


class RedisCounters:
    def __init__(self, url: str, prefix: str = "tokenway:", timeout_s: float = 1.0, pause_s: float = 1.0) -> None:
        self._redis = PipelinedRedis(url, timeout_s=timeout_s)
        self._prefix = prefix
        self._pause_s = pause_s
        self._down_until = 0.0
        self._failures = 0  # in a row: one slow answer under load is not an outage
        self._settling = _Settlements()
        self._settle_scheduled = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._leases: set[LeaseCells] = set()  # with a share that has not gone back yet
        self._sweep: asyncio.TimerHandle | None = None
        self.settle_failures = 0  # settles are sent after their requests ended: counted, not raised

    async def _run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` on ``keys`` (the prefix already on them). ``_call``, inlined: this is on every
        limited request, and a coroutine less is a frame less on each of its resumes."""
        if time.monotonic() < self._down_until:
            raise CountersUnavailable("Redis was unreachable a moment ago")
        try:
            result = await self._redis.eval(script, keys, args)
        except _FAILURES as exc:
            raise self._failed(exc) from exc
        self._failures = 0
        return result

    async def acquire(
        self,
        buckets: Sequence[Bucket],
        tokens: int,
        slot: Slot | None = None,
        reservation: Reservation | None = None,
        lease: LeaseCells | None = None,
        share: int = 0,
    ) -> Admission:
        """``Counters.acquire``; with a ``lease``, what its share had left goes back in the same call, and
        up to ``share`` more requests' worth is taken for it (``leases``)."""
        prefix = self._prefix
        keys = [prefix + b.key for b in buckets]
        backs, money_backs = [0] * len(buckets), list[int]()
        if lease is not None:
            backs, money_backs = lease.give_back(reservation is not None)
        args: list[Any] = [len(buckets), 0 if slot is None else 1, share, FRACTION]
        for bucket, back in zip(buckets, backs, strict=True):
            args += (bucket.capacity, tokens if bucket.kind == "tokens" else 1, back)
        if slot is not None:
            keys.append(prefix + slot.key)
            args += [slot.limit, slot.member, slot.ttl_s * 1000]
        if reservation is not None:
            keys += [prefix + line.key for line in reservation.lines]
            args += _reserve_args(reservation.lines, reservation.amount, money_backs)
        try:
            raw = await self._run(_ACQUIRE, keys, args)
        except CountersUnavailable:
            if lease is not None:
                lease.lost(backs, money_backs)
            raise
        denied, held, levels = int(raw[0]), raw[2] == 1, raw[4:]
        if lease is not None:
            granted = int(raw[3])
            amount = reservation.amount if held and reservation is not None else 0
            levels = lease.granted(granted, tokens, amount, levels, time.monotonic())
            if granted:
                self._leased(lease)
        return Admission(denied - 1 if denied else None, int(raw[1]) / 1000.0, levels, held)

    def finish(
        self, slot: Slot | None, buckets: Sequence[Bucket], delta: int, lines: Sequence[BudgetLine] = (), money: int = 0
    ) -> None:
        settling = self._settling
        if slot is not None:
            settling.slots.append((slot.key, slot.member))
        if delta:
            tokens = settling.tokens
            for bucket in buckets:
                entry = tokens.get(bucket.key)
                tokens[bucket.key] = (bucket.capacity, delta + (entry[1] if entry else 0))
        if money:
            budgets = settling.budgets
            for line in lines:
                budgets[line.key] = budgets.get(line.key, 0) + money
        if slot is not None or delta or money:
            self._settle_soon()

    def cells(
        self, buckets: Sequence[Bucket], slot: tuple[str, int] | None = None, lines: Sequence[BudgetLine] = ()
    ) -> LeaseCells:
        return LeaseCells(self, buckets, slot, lines)

    def _leased(self, lease: LeaseCells) -> None:
        self._leases.add(lease)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(TTL_S, self._return_shares)

    def _return_shares(self, everything: bool = False) -> None:
        """Shares that ended (all of them at shutdown) go back to Redis with the next settle call."""
        self._sweep = None
        now = time.monotonic()
        settling = self._settling
        for lease in [lease for lease in self._leases if everything or lease.until <= now]:
            self._leases.discard(lease)
            buckets, lines = lease.returned()
            for bucket, left in buckets:
                if left:
                    entry = settling.tokens.get(bucket.key)
                    settling.tokens[bucket.key] = (bucket.capacity, (entry[1] if entry else 0) - left)
            for line, left in lines:
                if left:
                    settling.budgets[line.key] = settling.budgets.get(line.key, 0) - left
        if self._leases:
            soonest = min(lease.until for lease in self._leases)
            self._sweep = asyncio.get_running_loop().call_later(max(soonest - now, 0.01), self._return_shares)
        if settling:
            self._settle_soon()

    async def reserve(self, lines: list[BudgetLine], amount: int) -> tuple[int | None, int]:
        keys = [self._prefix + line.key for line in lines]
        index, used = await self._run(_RESERVE, keys, _reserve_args(lines, amount))
        return (int(index) - 1 if index else None), int(used)

    def settle(self, lines: list[BudgetLine], delta: int) -> None:
        self.finish(None, (), 0, lines, delta)

    def _settle_soon(self) -> None:
        # Settling answers nobody: whatever ends during this loop turn goes out as one script call
        # (merged per counter) a turn or two later, and no request waits for it. Settles mostly give
        # back (reservations are the worst case), so landing a moment late errs on the strict side.
        if not self._settle_scheduled:
            self._settle_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_settlements)

    def _send_settlements(self) -> None:
        self._settle_scheduled = False
        batch, self._settling = self._settling, _Settlements()
        if batch:
            task = asyncio.ensure_future(self._settle_batch(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _settle_batch(self, batch: _Settlements) -> None:
        prefix = self._prefix
        keys = [prefix + key for key in (*batch.tokens, *(key for key, _ in batch.slots), *batch.budgets)]
        args: list[Any] = [len(batch.tokens), len(batch.slots)]
        for capacity, delta in batch.tokens.values():
            args += (capacity, delta)
        args += [member for _, member in batch.slots]
        args += batch.budgets.values()
        try:
            await self._run(_SETTLE, keys, args)
        except CountersUnavailable:
            self.settle_failures += 1

    async def committed(self, line: BudgetLine) -> int:
        value = await self._call(self._redis.call, "GET", self._prefix + line.key)
        return int(value or 0)

    async def seed(self, line: BudgetLine, amount: int) -> None:
        # Redis keeps its own counters; the ledger only seeds a counter Redis has lost (e.g. after a flush).
        expiry = ("EX", line.ttl_s) if line.ttl_s else ()
        await self._call(self._redis.call, "SET", self._prefix + line.key, amount, "NX", *expiry)

    async def _call(self, send: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        if time.monotonic() < self._down_until:  # checked before anything is sent
            raise CountersUnavailable("Redis was unreachable a moment ago")
        try:
            result = await send(*args)
        except _FAILURES as exc:
            raise self._failed(exc) from exc
        self._failures = 0
        return result

    def _failed(self, exc: OSError) -> CountersUnavailable:
        self._failures += 1
        if self._failures >= 3:
            # Pause before trying again so that a dead Redis costs one timeout per second, not per request.
            self._down_until = time.monotonic() + self._pause_s
        return CountersUnavailable(f"Redis is unreachable: {exc!r}")

    async def flush(self) -> None:
        """Send the settles not sent yet and wait until Redis has applied every settle sent so far."""
        self._send_settlements()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def aclose(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
        self._return_shares(everything=True)
        await self.flush()  # what ended last, and the shares, are settled before the connection goes
        await self._redis.aclose()


def _reserve_args(lines: list[BudgetLine], amount: int, backs: list[int] | None = None) -> list[Any]:
    args: list[Any] = [amount]
    for i, line in enumerate(lines):
        args += (line.limit, line.ttl_s, backs[i] if backs else 0)
    return args


class _Settlements:
    """Settles not yet sent, merged per counter."""

    __slots__ = ("budgets", "slots", "tokens")

    def __init__(self) -> None:
        self.tokens: dict[str, tuple[int, int]] = {}  # bucket key -> (capacity, tokens to take)
        self.slots: list[tuple[str, str]] = []  # (slot key, member) to free
        self.budgets: dict[str, int] = {}  # budget counter -> nano-dollars to add

    def __bool__(self) -> bool:
        return bool(self.tokens or self.slots or self.budgets)
