"""The pipelined Redis connection: answers reach the right caller, and a dead or silent Redis never hangs anyone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.access_support import REDIS
from tests.servers import free_port
from tokenway.stores.redis_pipe import PipelinedRedis, RedisReplyError, Script

ECHO = Script("return ARGV[1]")


@pytest.fixture
async def redis() -> AsyncIterator[PipelinedRedis]:
    client = PipelinedRedis(REDIS)
    yield client
    await client.aclose()


async def test_concurrent_callers_each_get_their_own_answer(redis: PipelinedRedis) -> None:
    answers = await asyncio.gather(*(redis.eval(ECHO, [], [f"caller-{i}"]) for i in range(2000)))
    assert answers == [f"caller-{i}".encode() for i in range(2000)]


async def test_a_cancelled_caller_does_not_shift_the_answers_of_others(redis: PipelinedRedis) -> None:
    slow = asyncio.ensure_future(redis.call("BLPOP", "tw-test-pipe-never", "0.2"))  # Redis answers after 0.2 s
    await asyncio.sleep(0.05)
    slow.cancel()
    assert await redis.call("ECHO", "after") == b"after"  # queued behind the cancelled one, answered to itself


async def test_a_script_the_server_forgot_is_sent_again(redis: PipelinedRedis) -> None:
    script = Script("return 'fresh-' .. ARGV[1]")
    await redis.call("SCRIPT", "FLUSH")
    assert await redis.eval(script, [], ["a"]) == b"fresh-a"
    assert await redis.eval(script, [], ["b"]) == b"fresh-b"


async def test_reply_errors_are_raised_to_their_caller_only(redis: PipelinedRedis) -> None:
    bad, good = redis.call("INCRBY", "tw-test-pipe-int", "not-a-number"), redis.call("ECHO", "ok")
    with pytest.raises(RedisReplyError, match="not an integer"):
        await bad
    assert await good == b"ok"


async def test_a_killed_connection_fails_its_callers_and_the_next_call_reconnects(redis: PipelinedRedis) -> None:
    client_id = await redis.call("CLIENT", "ID")
    in_flight = asyncio.ensure_future(redis.call("BLPOP", "tw-test-pipe-never", "2"))
    killer = PipelinedRedis(REDIS)
    try:
        await killer.call("CLIENT", "KILL", "ID", client_id)
    finally:
        await killer.aclose()
    with pytest.raises(ConnectionError):
        await in_flight
    assert await redis.call("PING") == b"PONG"
    assert await redis.call("CLIENT", "ID") != client_id


async def test_a_silent_server_times_out_every_waiting_caller_at_once() -> None:
    async def accept_and_say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = PipelinedRedis(f"redis://127.0.0.1:{port}/0", timeout_s=0.4)
    try:
        started = time.monotonic()
        results = await asyncio.gather(*(client.call("PING") for _ in range(50)), return_exceptions=True)
        elapsed = time.monotonic() - started
    finally:
        await client.aclose()
        server.close()
    assert all(isinstance(r, TimeoutError) for r in results), results[:3]
    assert elapsed < 1.0  # one timeout for all of them, not one each


async def test_nobody_listening_fails_every_caller_after_one_attempt() -> None:
    client = PipelinedRedis(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    started = time.monotonic()
    results = await asyncio.gather(*(client.call("PING") for _ in range(100)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results), results[:3]
    assert time.monotonic() - started < 0.5


async def test_a_wrong_password_is_a_connection_error_that_says_why() -> None:
    client = PipelinedRedis(REDIS.replace("redis://", "redis://:wrong-password@"))
    with pytest.raises(ConnectionError, match="refused the connection set-up"):
        await client.call("PING")
    await client.aclose()


async def test_the_database_number_in_the_url_is_selected() -> None:
    client = PipelinedRedis(REDIS.rsplit("/", 1)[0] + "/3")
    try:
        await client.call("SET", "tw-test-pipe-db", "three", "EX", 5)
        info = (await client.call("CLIENT", "INFO")).decode()
        assert " db=3 " in info
    finally:
        await client.aclose()


async def test_an_answer_nobody_asked_for_drops_the_connection() -> None:
    connections = 0

    async def answer_twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.read(100)
        writer.write(b"+OK\r\n+OK\r\n")  # one answer too many: the replies would be one off from now on
        await writer.drain()
        await reader.read()

    server = await asyncio.start_server(answer_twice, "127.0.0.1", 0)
    client = PipelinedRedis(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0")
    try:
        assert await client.call("PING") == b"OK"
        await asyncio.sleep(0.05)
        assert await client.call("PING") == b"OK"  # on a new connection, not the answer left over
        assert connections == 2
    finally:
        await client.aclose()
        server.close()
