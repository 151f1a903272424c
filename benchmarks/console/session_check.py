"""What the ended-session check adds to a control-plane call (``tokenway/console/ended.py``).

Calls a do-nothing ASGI endpoint directly, bare and behind ``without_ended_sessions``, in the same
run: without a cookie (every script's call), with a live session cookie against the in-memory list,
and against the Redis list (its copy, read from Redis at most once a second). Prints microseconds per
call and how many Redis reads the Redis case made.

    PYTHONPATH=$PWD /work/main/.venv/bin/python benchmarks/console/session_check.py --calls 200000
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from typing import Any

import redis.asyncio

from tokenway.asgi import Message, Scope
from tokenway.console.ended import MemoryEndedSessions, RedisEndedSessions, without_ended_sessions
from tokenway.console.session import Sessions


async def endpoint(scope: Scope, receive: Any, send: Any) -> None:
    return None


async def receive() -> Message:
    return {"type": "http.request", "body": b""}


async def send(message: Message) -> None:
    return None


async def per_call_us(serve: Any, scope: Scope, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await serve(scope, receive, send)
    return (time.perf_counter() - started) / calls * 1e6


async def main(calls: int, redis_url: str) -> None:
    token = Sessions("bench-master").issue().token
    headers = [(b"host", b"gateway"), (b"user-agent", b"bench"), (b"accept", b"*/*")]
    plain = {"type": "http", "headers": headers}
    with_cookie = {"type": "http", "headers": [*headers, (b"cookie", f"tokenway_session={token}; "
                                                                   f"tokenway_csrf=x".encode())]}
    client = redis.asyncio.from_url(redis_url)
    key = f"bench-ended-{secrets.token_hex(4)}"
    reads = 0

    async def counted_zrangebyscore(*args: Any) -> Any:
        nonlocal reads
        reads += 1
        return await original(*args)

    original = client.zrangebyscore
    client.zrangebyscore = counted_zrangebyscore  # type: ignore[method-assign]
    memory = without_ended_sessions(endpoint, MemoryEndedSessions())
    in_redis = without_ended_sessions(endpoint, RedisEndedSessions(client, key))
    try:
        await in_redis(with_cookie, receive, send)  # the first read
        rows = [
            ("bare endpoint, no cookie", await per_call_us(endpoint, plain, calls)),
            ("checked, no cookie", await per_call_us(memory, plain, calls)),
            ("checked, session cookie, memory list", await per_call_us(memory, with_cookie, calls)),
        ]
        started, before = time.perf_counter(), reads
        rows.append(("checked, session cookie, Redis list", await per_call_us(in_redis, with_cookie, calls)))
        elapsed = time.perf_counter() - started
    finally:
        await client.delete(key)
        await client.aclose()
    bare = rows[0][1]
    print(f"{'case':40} {'us/call':>8} {'added us':>9}")
    for name, us in rows:
        print(f"{name:40} {us:8.2f} {us - bare:9.2f}")
    print(f"Redis reads during the Redis case: {reads - before} in {elapsed:.1f} s ({calls} calls)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.calls, arguments.redis))
