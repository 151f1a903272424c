"""How many wrong master keys one client address may try at the console's login.

``FAILURES`` wrong keys within ``WINDOW_S`` (counted from the first) and that address is refused with
429 until the window ends; logging in resets its count. Counted in Redis when the gateway has one,
so every replica counts the same attempts; else in this process. The client's address is the one
``api/client_address.py`` believes (the proxy's forwarded-for when the proxy is trusted).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from tokenway.console.ended import redis_down_is_503

FAILURES = 5
WINDOW_S = 60
_MOST_ADDRESSES = 100_000  # in memory: past this, windows that ended are dropped on the next failure


class LoginAttempts(Protocol):
    async def refused_for(self, client: str) -> float:
        """Seconds until ``client`` may try again; 0 when it may now."""
        ...

    async def failed(self, client: str) -> None: ...

    async def succeeded(self, client: str) -> None: ...


def open_login_attempts(redis: Any, prefix: str) -> LoginAttempts:
    """In Redis under ``<prefix>console:login:<address>`` when the gateway has one, else in memory."""
    return RedisLoginAttempts(redis, f"{prefix}console:login:") if redis is not None else MemoryLoginAttempts()


class MemoryLoginAttempts:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}  # address: (window's end, failures in it)

    async def refused_for(self, client: str) -> float:
        ends, failures = self._windows.get(client, (0.0, 0))
        wait = ends - self._clock()
        return wait if failures >= FAILURES and wait > 0 else 0.0

    async def failed(self, client: str) -> None:
        now = self._clock()
        ends, failures = self._windows.get(client, (0.0, 0))
        self._windows[client] = (ends, failures + 1) if ends > now else (now + WINDOW_S, 1)
        if len(self._windows) > _MOST_ADDRESSES:
            self._windows = {a: w for a, w in self._windows.items() if w[0] > now}

    async def succeeded(self, client: str) -> None:
        self._windows.pop(client, None)


class RedisLoginAttempts:
    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    async def refused_for(self, client: str) -> float:
        with redis_down_is_503("count login attempts"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(self._prefix + client)
                pipe.pttl(self._prefix + client)
                failures, ttl_ms = await pipe.execute()
        return ttl_ms / 1000 if failures is not None and int(failures) >= FAILURES and ttl_ms > 0 else 0.0

    async def failed(self, client: str) -> None:
        with redis_down_is_503("count login attempts"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.incr(self._prefix + client)
                pipe.expire(self._prefix + client, WINDOW_S, nx=True)  # the window runs from the first failure
                await pipe.execute()

    async def succeeded(self, client: str) -> None:
        with redis_down_is_503("count login attempts"):
            await self._redis.delete(self._prefix + client)
