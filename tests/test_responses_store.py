"""Stored responses: per key, with a TTL and bounds, in memory and in a real Redis."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio

from tokenway.translate.responses_store import MemoryResponses, RedisResponses, ResponsesConfig, ResponseStore

REDIS = "redis://127.0.0.1:6379/0"


def _record(n: int) -> dict[str, Any]:
    return {"response": {"id": f"resp_{n}", "output": [{"type": "message", "n": n}]}, "items": [{"n": n}]}


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def redis_store() -> AsyncIterator[tuple[RedisResponses, Any]]:
    client = redis.asyncio.from_url(REDIS)
    prefix = f"tw-test-resp-{secrets.token_hex(4)}:"
    yield RedisResponses(client, ResponsesConfig(ttl_s=1.0, max_per_key=3, redis_prefix=prefix)), client
    keys = [key async for key in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def _owners_are_apart(store: ResponseStore) -> None:
    await store.put("alice", "resp_1", _record(1))
    assert await store.get("alice", "resp_1") == _record(1)
    assert await store.get("bob", "resp_1") is None  # another key's id is an unknown one
    assert await store.delete("bob", "resp_1") is False
    assert await store.delete("alice", "resp_1") is True
    assert await store.get("alice", "resp_1") is None
    assert await store.delete("alice", "resp_1") is False


async def test_memory_keeps_each_keys_responses_apart() -> None:
    await _owners_are_apart(MemoryResponses(ResponsesConfig()))


async def test_redis_keeps_each_keys_responses_apart(redis_store: tuple[RedisResponses, Any]) -> None:
    await _owners_are_apart(redis_store[0])


async def test_memory_records_expire_and_are_bounded_per_key_and_in_all() -> None:
    clock = _Clock()
    store = MemoryResponses(ResponsesConfig(ttl_s=60, max_per_key=2, max_entries=3), clock)
    for n in range(3):
        await store.put("alice", f"resp_{n}", _record(n))
    assert await store.get("alice", "resp_0") is None  # the oldest of alice's three went
    assert await store.get("alice", "resp_2") == _record(2)
    await store.put("bob", "resp_9", _record(9))
    await store.put("carol", "resp_8", _record(8))  # four in all: the oldest (alice's resp_1) goes
    assert await store.get("alice", "resp_1") is None and await store.get("bob", "resp_9") is not None
    clock.now += 61
    assert await store.get("bob", "resp_9") is None


async def test_redis_records_expire_and_are_bounded_per_key(redis_store: tuple[RedisResponses, Any]) -> None:
    store, client = redis_store
    for n in range(5):
        await store.put("alice", f"resp_{n}", _record(n))
    assert [await store.get("alice", f"resp_{n}") is not None for n in range(5)] == [False, False, True, True, True]
    assert await client.zcard(store._index("alice")) == 3
    await asyncio.sleep(1.1)  # ttl_s: 1
    assert await store.get("alice", "resp_4") is None
    assert await client.exists(store._index("alice")) == 0  # the index expires with its records
