"""A lean HTTP/1.1 client for the calls the gateway relays to model servers.

Every request a client sends becomes one of these calls, so their cost is the gateway's cost.
aiohttp's general client (cookies, redirects, proxies, tracing, multidict headers, a request and
a response object of many fields, timers per phase) was about a quarter of the gateway's CPU per
request (see benchmarks/README.md). What a relay needs is much less: POST a body that is already
bytes, with headers mostly rendered once per deployment, to an origin reached over kept-alive
connections; read the status and a few headers; take the body whole or piece by piece as it
arrives. That is this module: httptools parses the response (the same C parser the server side
uses), and the request leaves in one write.

Connections are kept per origin, most recently used first, while the backend keeps them open
(a closed one leaves its pool at once). A request that finds its reused connection closed under
it before a single byte of answer is sent again once on a new connection, as browsers do: the
backend closed an idle connection just then, and most likely never saw the request. aiohttp stays for everything
off the hot path (model lists, health checks, engine metrics, Ollama's NDJSON).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import httptools

KEEPALIVE_S = 60.0  # an idle connection older than this is not reused (servers drop them around then)
DRAIN_S = 5.0  # how long a released response's connection may take to finish its message
PAUSE_BYTES = 1 << 20  # a stream's unread body above this pauses reading from the backend


class UpstreamHttpError(Exception):
    """The exchange with the backend failed below HTTP's level: no connection, a broken one, or bytes
    that are not HTTP."""


class ConnectFailed(UpstreamHttpError):
    pass


class ConnectionBroken(UpstreamHttpError):
    pass


class BadResponse(UpstreamHttpError):
    pass


class AnswerTimedOut(UpstreamHttpError):
    """The answer (its head, or all of it) did not arrive within the caller's limit."""


class Endpoint:
    """A URL parsed once: its origin and the start of every request to it, already bytes."""

    __slots__ = ("origin", "start")

    def __init__(self, url: str, method: str = "POST") -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        tls = scheme == "https"
        host = parts.hostname
        port = parts.port or (443 if tls else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        named_host = f"[{host}]" if ":" in host else host
        authority = named_host if port == (443 if tls else 80) else f"{named_host}:{port}"
        self.origin = (tls, host, port)
        self.start = f"{method} {path} HTTP/1.1\r\nhost: {authority}\r\n".encode()


def render_headers(headers: Mapping[str, str]) -> bytes:
    """Header lines as bytes, refusing what could split a request (CR, LF, NUL)."""
    text = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    if any(bad in name or bad in value for name, value in headers.items() for bad in ("\r", "\n", "\0")):
        raise ValueError("a header name or value contains CR, LF or NUL")
    return text.encode("latin-1")


class Response:
    """Status and headers as soon as they arrive; the body whole (``read``) or as it comes (``chunks``).

    End with ``release`` (the connection goes back to its pool once the message is complete) or
    ``close`` (it is dropped: a failure, or a body not read to its end). Either may be called again,
    and after the other: only the first counts.
    """

    __slots__ = ("_buffered", "_chunks", "_conn", "_ended", "_error", "_flowing", "_head", "_release", "_timer",
                 "_waiter", "_whole", "complete", "keep_alive", "raw_headers", "status")

    def __init__(self, conn: _Connection, limit_s: float | None, whole: bool) -> None:
        self._conn = conn
        # One timer for the whole wait (cheaper than ``asyncio.timeout`` around it): until the head
        # arrives, or until the last byte when ``whole`` (an error answer is always read whole).
        # After an early ``release``, the same slot holds the wait for the message's end.
        self._timer = None if limit_s is None else conn.loop.call_later(limit_s, self._time_out, limit_s)
        self._whole = whole
        self._head: asyncio.Future[None] = conn.loop.create_future()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: UpstreamHttpError | None = None
        self._release = False  # released before complete: pool the connection when it completes
        # Read piece by piece (``chunks``): a full buffer pauses the backend until the reader catches
        # up. ``read`` wants it all anyway, and pausing there would wait for a reader that never comes.
        self._flowing = False
        self._ended = False  # released or closed
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []  # names lower-case
        self.keep_alive = False
        self.complete = False

    def header(self, name: bytes) -> str | None:
        """The first value of a header (``name`` lower-case)."""
        for key, value in self.raw_headers:
            if key == name:
                return value.decode("latin-1")
        return None

    async def read(self) -> bytes:
        """The whole body; the connection goes back to its pool."""
        while not self.complete:
            if self._error is not None:
                raise self._error
            await self._wait()
        body = b"".join(self._chunks)
        self._chunks.clear()
        self.release()
        return body

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body in the pieces it arrives in, each as soon as it arrives."""
        self._flowing = True
        chunks = self._chunks
        while True:
            while chunks:
                chunk = chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered < PAUSE_BYTES:
                    self._conn.resume()
                yield chunk
            if self.complete:
                return
            if self._error is not None:
                raise self._error
            await self._wait()

    def release(self) -> None:
        """Done with the answer: the connection is reused once its message is complete."""
        if self._ended:
            return
        self._ended = True
        if self.complete:
            self._conn.done(reusable=self.keep_alive and self._error is None)
        else:
            # A stream's last event can arrive before the message's end (the chunked terminator
            # often comes in the next packet): wait a moment for it rather than drop a good
            # connection. The answer's own limit no longer matters; this one ends at completion.
            self._release = True
            self._flowing = False
            self._conn.resume()
            self._stop_timer()
            self._timer = self._conn.loop.call_later(DRAIN_S, self._give_up)

    def close(self) -> None:
        if not self._ended:
            self._ended = True
            self._conn.close()

    def _give_up(self) -> None:
        self._timer = None
        if not self.complete:
            self._conn.close()

    def _time_out(self, limit_s: float) -> None:
        self._timer = None
        self._fail(AnswerTimedOut(f"no {'answer' if self._head.done() else 'response'} within {limit_s:.3g}s"))
        self._conn.close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _wait(self) -> None:
        waiter = self._waiter = self._conn.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # what the connection reports
    def _headers_complete(self, status: int, keep_alive: bool, headers: list[tuple[bytes, bytes]]) -> None:
        self.status, self.keep_alive, self.raw_headers = status, keep_alive, headers
        if not self._whole and status == 200:
            self._stop_timer()  # a stream's pace from here on is the stream writer's to bound
        if not self._head.done():
            self._head.set_result(None)

    def _body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > PAUSE_BYTES and self._flowing:  # only a reader of chunks drains the buffer
            self._conn.pause()
        self._wake()

    def _complete(self) -> None:
        self.complete = True
        self._stop_timer()
        if self._release:
            self._chunks.clear()
            self._conn.done(reusable=self.keep_alive and self._error is None)
        self._wake()

    def _fail(self, error: UpstreamHttpError) -> None:
        if self.complete:
            return
        self._stop_timer()
        self._error = error
        if not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # marked retrieved: the waiter may be gone (cancelled)
        self._wake()


class _Connection(asyncio.Protocol):
    """One kept-alive connection to a backend, carrying one exchange at a time."""

    __slots__ = ("_client", "_headers", "_informational", "_parser", "_paused", "_response", "_until_close", "closed",
                 "idle_since", "loop", "origin", "received", "transport")

    def __init__(self, client: HttpClient, origin: tuple[bool, str, int]) -> None:
        self.loop = client.loop
        self._client = client
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._response: Response | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._until_close = False  # the body has no length and ends when the backend closes
        self._informational = False  # the message being parsed is a 1xx, not the answer
        self._paused = False
        self.closed = False
        self.received = False  # any byte of the current exchange's answer arrived
        self.idle_since = 0.0

    def send(self, data: bytes, limit_s: float | None, whole: bool) -> Response:
        assert self.transport is not None and self._response is None
        response = self._response = Response(self, limit_s, whole)
        self.received = False
        self.transport.write(data)
        return response

    def done(self, reusable: bool) -> None:
        """The exchange is over: back to the pool, or closed."""
        self._response = None
        if reusable and not self.closed:
            self.resume()
            self._client.put_back(self)
        else:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            self._client.forget(self)

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._response is None:  # an idle connection that speaks unasked cannot be trusted again
            self.close()
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._response is not None:
                self._response._fail(BadResponse(f"the backend's answer is not valid HTTP ({exc})"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._client.forget(self)
        response = self._response
        if response is None:
            return
        if self._until_close and response.status:
            response._complete()  # no length given: the close is the end of the body
        else:
            response._fail(ConnectionBroken(f"the backend closed the connection{f' ({exc})' if exc else ''}"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        response = self._response
        if response is not None:
            parser = self._parser
            if parser.get_status_code() < 200:  # 100 Continue, 103 Early Hints: the answer follows
                self._informational = True
                return
            framed = any(name in (b"content-length", b"transfer-encoding") for name, _ in self._headers)
            self._until_close = not framed
            response._headers_complete(parser.get_status_code(), parser.should_keep_alive() and framed,
                                       self._headers)

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._response._body(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
        elif self._response is not None:
            self._response._complete()


class HttpClient:
    """Kept-alive connections per origin; one request in flight per connection."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop | None = None, keepalive_s: float = KEEPALIVE_S,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self._keepalive_s = keepalive_s
        # Per origin, most recently used last: reuse takes from the right, the sweep from the left.
        self._idle: dict[tuple[bool, str, int], deque[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._tls = tls  # https: the system's trusted CAs unless given (made on first use: it takes ms)

    async def post(
        self, endpoint: Endpoint, headers: bytes, body: bytes, *, connect_s: float | None, answer_s: float | None,
        whole: bool,
    ) -> Response:
        """Send the request and wait for the answer's status and headers.

        ``headers`` are rendered lines (``render_headers``). ``answer_s`` bounds the wait for the
        answer from now on: for its head, or for all of it (reading included) when ``whole``;
        past it, ``AnswerTimedOut``. A new connection must also be made within ``connect_s``.
        """
        loop = self.loop
        deadline = None if answer_s is None else loop.time() + answer_s
        data = b"%scontent-length: %d\r\n%s\r\n%s" % (endpoint.start, len(body), headers, body)
        conn = self._reuse(endpoint.origin)
        if conn is not None:
            try:
                return await self._exchange(conn, data, answer_s, whole)
            except ConnectionBroken:
                if conn.received:
                    raise
                # the backend closed this idle connection just as it was reused: it never saw the request
        left = None if deadline is None else deadline - loop.time()
        conn = await self._connect(endpoint.origin, connect_s, left)
        return await self._exchange(conn, data, None if deadline is None else deadline - loop.time(), whole)

    async def aclose(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._idle.clear()

    async def _exchange(self, conn: _Connection, data: bytes, limit_s: float | None, whole: bool) -> Response:
        response = conn.send(data, limit_s, whole)
        try:
            await response._head
        except BaseException:
            conn.close()  # cancelled or failed mid-exchange: the connection's state is unknown
            raise
        return response

    def _reuse(self, origin: tuple[bool, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        oldest = time.monotonic() - self._keepalive_s
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since > oldest:
                return conn
            conn.close()
        return None

    async def _connect(
        self, origin: tuple[bool, str, int], connect_s: float | None, answer_s: float | None
    ) -> _Connection:
        tls, host, port = origin
        if tls and self._tls is None:
            self._tls = ssl.create_default_context()
        conn = _Connection(self, origin)
        limits = [s for s in (connect_s, answer_s) if s is not None]
        limit = min(limits) if limits else None
        try:
            async with asyncio.timeout(limit) as deadline:
                await self.loop.create_connection(
                    lambda: conn, host, port, ssl=self._tls if tls else None, server_hostname=host if tls else None
                )
        except TimeoutError:
            if not deadline.expired():
                raise
            if limit == answer_s and limit != connect_s:
                raise AnswerTimedOut(f"no response within {limit:.3g}s (still connecting)") from None
            raise ConnectFailed(f"connecting to {host}:{port} took over {limit:.3g}s") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        self._open.add(conn)
        return conn

    def put_back(self, conn: _Connection) -> None:
        now = conn.idle_since = time.monotonic()
        idle = self._idle.get(conn.origin)
        if idle is None:
            idle = self._idle[conn.origin] = deque()
        elif idle and idle[0].idle_since < now - self._keepalive_s:
            # Reuse takes the newest, so after a burst the oldest would wait for the backend to
            # close them: close one here each time instead, and a pool shrinks back to its need.
            idle.popleft().close()
        idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)
