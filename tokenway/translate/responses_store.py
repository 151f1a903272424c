"""Stored responses, per key: what ``previous_response_id``, ``GET`` and ``DELETE /v1/responses/{id}`` read.

A record is one response object and the conversation that led to it (its input items, those of
the responses before it included), so a follow-up needs one read, whatever the chain's length.
Records belong to the key that made them (its id, ``master`` or ``anonymous``): another key's id
is as unknown as one never made. They expire after ``ttl_s`` and each key keeps at most
``max_per_key`` (the oldest go first). In memory on one box; in Redis when the gateway has one,
so every replica continues every conversation.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated, Any, Literal, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field


class ResponsesConfig(BaseModel):
    """``responses:`` in the config: how long and how many stored responses are kept."""

    model_config = ConfigDict(extra="forbid")

    ttl_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 86_400.0
    max_per_key: Annotated[int, Field(ge=1)] = 1_000
    max_entries: Annotated[int, Field(ge=1)] = 100_000  # in memory, over every key together
    backend: Literal["auto", "memory", "redis"] = "auto"  # auto: Redis when TOKENWAY_REDIS_URL is set
    redis_prefix: str = "tw:resp:"


class ResponseStore(Protocol):
    """Records by owner and response id; a record is the JSON of ``{"response", "items"}``."""

    async def get(self, owner: str, response_id: str) -> dict[str, Any] | None: ...

    async def put(self, owner: str, response_id: str, record: dict[str, Any]) -> None: ...

    async def delete(self, owner: str, response_id: str) -> bool: ...


def open_store(config: ResponsesConfig, redis: Any) -> ResponseStore:
    """The store ``config`` asks for (``redis``: the gateway's client, or None)."""
    if config.backend == "redis" and redis is None:
        raise ValueError("responses.backend is 'redis' but no Redis is configured; set TOKENWAY_REDIS_URL.")
    if redis is not None and config.backend != "memory":
        return RedisResponses(redis, config)
    return MemoryResponses(config)


class MemoryResponses:
    """One process's records, least recently stored first, bounded per key and in all."""

    def __init__(self, config: ResponsesConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        # The records themselves, not their JSON: nobody changes a record once stored (readers copy its lists).
        self._records: OrderedDict[tuple[str, str], tuple[float, dict[str, Any]]] = OrderedDict()
        self._per_owner: dict[str, OrderedDict[str, None]] = {}

    async def get(self, owner: str, response_id: str) -> dict[str, Any] | None:
        found = self._records.get((owner, response_id))
        if found is None:
            return None
        if found[0] <= self._clock():
            self._drop(owner, response_id)
            return None
        return found[1]

    async def put(self, owner: str, response_id: str, record: dict[str, Any]) -> None:
        self._records[(owner, response_id)] = (self._clock() + self._config.ttl_s, record)
        ids = self._per_owner.setdefault(owner, OrderedDict())
        ids[response_id] = None
        while len(ids) > self._config.max_per_key:
            self._drop(owner, next(iter(ids)))
        while len(self._records) > self._config.max_entries:
            oldest_owner, oldest_id = next(iter(self._records))
            self._drop(oldest_owner, oldest_id)

    async def delete(self, owner: str, response_id: str) -> bool:
        if (owner, response_id) not in self._records:
            return False
        self._drop(owner, response_id)
        return True

    def _drop(self, owner: str, response_id: str) -> None:
        self._records.pop((owner, response_id), None)
        ids = self._per_owner.get(owner)
        if ids is not None:
            ids.pop(response_id, None)
            if not ids:
                del self._per_owner[owner]


class RedisResponses:
    """Records in Redis (every replica sees them): a key per record with the TTL, and a sorted set
    per owner (by time stored) that bounds how many it keeps."""

    def __init__(self, redis: Any, config: ResponsesConfig) -> None:
        self._redis = redis
        self._config = config
        self._ttl_ms = max(1, int(config.ttl_s * 1000))

    def _key(self, owner: str, response_id: str) -> str:
        return f"{self._config.redis_prefix}{owner}:r:{response_id}"

    def _index(self, owner: str) -> str:
        return f"{self._config.redis_prefix}{owner}:index"

    async def get(self, owner: str, response_id: str) -> dict[str, Any] | None:
        raw = await self._redis.get(self._key(owner, response_id))
        if raw is None:
            return None
        record: dict[str, Any] = orjson.loads(raw)
        return record

    async def put(self, owner: str, response_id: str, record: dict[str, Any]) -> None:
        now = time.time()
        index = self._index(owner)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._key(owner, response_id), orjson.dumps(record), px=self._ttl_ms)
            pipe.zadd(index, {response_id: now})
            pipe.zremrangebyscore(index, "-inf", now - self._config.ttl_s)  # expired records' entries
            pipe.pexpire(index, self._ttl_ms)
            pipe.zcard(index)
            count = (await pipe.execute())[-1]
        extra = int(count) - self._config.max_per_key
        if extra > 0:
            oldest = await self._redis.zpopmin(index, extra)
            if oldest:
                await self._redis.delete(*(self._key(owner, _text(member)) for member, _ in oldest))

    async def delete(self, owner: str, response_id: str) -> bool:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(self._key(owner, response_id))
            pipe.zrem(self._index(owner), response_id)
            removed = (await pipe.execute())[0]
        return bool(removed)


def _text(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member
