"""How many wrong master keys one client address may try at the console's login.

``FAILURES`` wrong keys within ``WINDOW_S`` (counted from the first) and that address is refused with
429 until the window ends; logging in resets its count. Every attempt is counted before its key is
compared, so a burst sent at once gets no more tries than one sent one by one. Counted in Redis when
the gateway has one, so every replica counts the same attempts; else in this process. The client's
address is the one ``api/client_address.py`` believes (the proxy's forwarded-for when it is trusted).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from tokenway.console.ended import redis_down_is_503

FAILURES = 5
WINDOW_S = 60
_MOST_ADDRESSES = 100_000  # in memory: past this, windows that ended are dropped on the next attempt


class LoginAttempts(Protocol):
    async def admit(self, client: str) -> float:
        """Count an attempt by ``client``; the seconds it must wait when this one is over the limit, else 0.
        Counted before the key is compared, so attempts sent all at once cannot pass a check together."""
        ...

    async def succeeded(self, client: str) -> None: ...


def open_login_attempts(redis: Any, prefix: str) -> LoginAttempts:
    """In Redis under ``<prefix>console:login:<address>`` when the gateway has one, else in memory."""
    return RedisLoginAttempts(redis, f"{prefix}console:login:") if redis is not None else MemoryLoginAttempts()


class MemoryLoginAttempts:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}  # address: (window's end, attempts in it)

    async def admit(self, client: str) -> float:
        now = self._clock()
        ends, attempts = self._windows.get(client, (0.0, 0))
        if ends <= now:
            ends, attempts = now + WINDOW_S, 0
        self._windows[client] = (ends, attempts + 1)
        if len(self._windows) > _MOST_ADDRESSES:
            self._windows = {a: w for a, w in self._windows.items() if w[0] > now}
        return ends - now if attempts >= FAILURES else 0.0

    async def succeeded(self, client: str) -> None:
        self._windows.pop(client, None)


class RedisLoginAttempts:
    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    async def admit(self, client: str) -> float:
        key = self._prefix + client
        with redis_down_is_503("count login attempts"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, WINDOW_S, nx=True)  # the window runs from the first attempt
                pipe.pttl(key)
                attempts, _, ttl_ms = await pipe.execute()
        return max(ttl_ms, 1) / 1000 if int(attempts) > FAILURES else 0.0

    async def succeeded(self, client: str) -> None:
        with redis_down_is_503("count login attempts"):
            await self._redis.delete(self._prefix + client)
