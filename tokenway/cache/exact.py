"""Exact-cache stores: bytes by key with a TTL. In memory (one process) or Redis (all replicas).

Both are deliberately dumb (get and set of opaque bytes): what an entry means lives in
``entry.py``, what a key covers in ``keys.py``. A store may fail; the cache policy treats any
exception as a miss, so a Redis outage slows the gateway down to no-cache speed, never breaks it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Protocol


class CacheStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...


class MemoryStore:
    """TTL + LRU, bounded by the bytes it holds (keys and values), not by a count of entries."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= time.monotonic():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        size = len(key) + len(value)
        if size > self.max_bytes:
            return
        if key in self._items:
            self._drop(key)
        self._items[key] = (time.monotonic() + ttl_s, value)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._items)))

    def _drop(self, key: str) -> None:
        _, value = self._items.pop(key)
        self.bytes -= len(key) + len(value)


class RedisStore:
    """Entries shared by every replica; Redis evicts by its own ``maxmemory-policy``."""

    def __init__(self, redis: Any, prefix: str = "tw:cache:x:") -> None:
        self._redis = redis
        self._prefix = prefix

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._redis.get(self._prefix + key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._redis.set(self._prefix + key, value, px=max(1, int(ttl_s * 1000)))
