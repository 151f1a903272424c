"""A pipelined Redis connection for the counters on the request path: one socket, many callers.

Every request makes a few small Redis calls (take from the rate-limit buckets, reserve the
budget, settle both). Through a pooled client each call checks a connection out, writes, waits
for its own answer and checks the connection back in, and that bookkeeping cost more CPU than
the rest of the gateway's request path. Here every caller writes into one buffer that is sent
once per event-loop turn, and Redis's answers, which come back in order, are handed to the
callers' futures as they arrive: at 64 concurrent requests one write and one read carry dozens
of commands. Replies are parsed by hiredis.

Failures: a command unanswered after ``timeout_s`` means the connection is stuck or dead (Redis
answers in order, so everything queued behind it is too); the connection is closed and every
waiting caller gets ``TimeoutError`` or ``ConnectionError`` (both ``OSError``). The next call
connects again. Blocking commands (BLPOP and the like) do not belong here: they would hold up
everything queued behind them.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
from collections.abc import Awaitable
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis


class RedisReplyError(Exception):
    """Redis answered with an error (a bug in a script or a wrong command, not an outage)."""


class Script:
    """A Lua script called by its SHA-1; sent in full once if the server does not know it yet."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class _Connection(asyncio.Protocol):
    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._reader = hiredis.Reader()
        self._pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._buffer: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio classes
        self._watch()

    def send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self.closed:
            future.set_exception(ConnectionError("the Redis connection is closed"))
            return future
        if not self._buffer:
            loop.call_soon(self._flush)  # everything sent during this turn of the loop goes in one write
        self._buffer.append(hiredis.pack_command(args))
        self._pending.append((future, loop.time()))
        return future

    def _flush(self) -> None:
        if self._buffer and self._transport is not None and not self.closed:
            self._transport.write(b"".join(self._buffer))
        self._buffer.clear()

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(ConnectionError(f"Redis sent something that is not RESP: {exc}"))
                return
            if reply is False:
                return
            if not self._pending:  # an answer to nothing asked: the stream is out of step, start over
                self._fail(ConnectionError("Redis sent an answer no command was waiting for"))
                return
            future, _ = self._pending.popleft()
            if future.done():  # its caller was cancelled; the answer is dropped
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(RedisReplyError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"the Redis connection was lost: {exc!r}" if exc else "Redis closed the connection"))

    def _watch(self) -> None:
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        if self._pending and loop.time() - self._pending[0][1] > self._timeout_s:
            self._fail(TimeoutError(f"Redis did not answer within {self._timeout_s:g} s"))
            return
        self._watchdog = loop.call_later(self._timeout_s / 4, self._watch)

    def _fail(self, exc: OSError) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._transport is not None:
            self._transport.abort()
        self._buffer.clear()
        while self._pending:
            future, _ = self._pending.popleft()
            if not future.done():
                future.set_exception(exc)

    def close(self) -> None:
        self._fail(ConnectionError("the Redis connection was closed by the gateway"))


class PipelinedRedis:
    """``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS) or ``unix:///path?db=N``."""

    def __init__(self, url: str, timeout_s: float = 1.0) -> None:
        self._url = url
        self._timeout_s = timeout_s
        self._connection: _Connection | None = None
        self._opening: asyncio.Future[_Connection] | None = None

    def call(self, *args: Any) -> Awaitable[Any]:
        # A plain function, not a coroutine: on an open connection the caller awaits the reply's
        # future directly, one frame less on every resume of the request path.
        connection = self._connection
        if connection is None or connection.closed:
            return self._connect_and_send(args)
        return connection.send(args)

    async def _connect_and_send(self, args: tuple[Any, ...]) -> Any:
        connection = await self._connect()
        return await connection.send(args)

    async def eval(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.call("EVAL", script.source, len(keys), *keys, *args)  # the server caches it from now on

    async def _connect(self) -> _Connection:
        # Callers that find no connection all wait for the same attempt: when Redis is down they all
        # fail after one timeout together, instead of queueing to try one after another.
        if self._opening is None:
            self._opening = asyncio.ensure_future(asyncio.wait_for(self._open(), self._timeout_s))
            self._opening.add_done_callback(self._opened)
        return await asyncio.shield(self._opening)

    def _opened(self, attempt: asyncio.Future[_Connection]) -> None:
        self._opening = None
        if not attempt.cancelled() and attempt.exception() is None:
            self._connection = attempt.result()

    async def _open(self) -> _Connection:
        parts = urlsplit(self._url)
        loop = asyncio.get_running_loop()
        timeout_s = self._timeout_s
        connection: _Connection
        if parts.scheme == "unix":
            _, connection = await loop.create_unix_connection(lambda: _Connection(timeout_s), parts.path)
        elif parts.scheme in ("redis", "rediss"):
            tls = ssl.create_default_context() if parts.scheme == "rediss" else None
            _, connection = await loop.create_connection(
                lambda: _Connection(timeout_s), parts.hostname or "127.0.0.1", parts.port or 6379, ssl=tls,
            )
        else:
            raise ValueError(f"a Redis URL starts with redis://, rediss:// or unix://, not {self._url!r}")
        setup = []
        if parts.password:
            user = (unquote(parts.username),) if parts.username else ()
            setup.append(connection.send(("AUTH", *user, unquote(parts.password))))
        db = parts.path.lstrip("/") if parts.scheme != "unix" else dict(_query(parts.query)).get("db", "")
        if db and db != "0":
            setup.append(connection.send(("SELECT", db)))
        try:
            for answer in setup:
                await answer
        except RedisReplyError as exc:  # a wrong password or database: the store is unusable, say why
            connection.close()
            raise ConnectionError(f"Redis refused the connection set-up: {exc}") from exc
        except BaseException:
            connection.close()
            raise
        return connection

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _query(query: str) -> list[tuple[str, str]]:
    return [tuple(part.split("=", 1)) for part in query.split("&") if "=" in part]  # type: ignore[misc]
