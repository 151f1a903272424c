"""uvicorn's httptools protocol, with the writes of one event-loop turn sent to the socket together,
and a hang-up callback for the app instead of a watcher task per request.

uvicorn writes a response's status line and headers, then its body, each with its own
``transport.write``; on an idle socket each one is a ``send`` system call. Here the head is held
back and goes out with the first body write: a non-streaming response leaves in one ``send``.
A head that no body follows in the same turn of the event loop (a stream waiting for its first
chunk) is sent at the start of the next turn; body writes are never held, so a stream's chunks
leave exactly when they are written.

``HttpToolsProtocol`` is uvicorn's private class. This subclass is kept because plain uvicorn
measured ≥ 5% fewer requests per second end to end (benchmarks/ab/RESULTS.md), and only for the
uvicorn versions in ``TESTED_UVICORN``: tests/test_http_protocol.py fails on any other, and
pyproject.toml's uvicorn range names the same ones.

It also bounds what a slow or oversized client can hold, which uvicorn's httptools protocol does
not (its ``timeout_keep_alive`` covers only the idle time between requests; the parser buffers
headers of any size and number). A request's head (request line and headers) must be complete
within ``limits.header_timeout_s`` of the first read that left it incomplete (or of the
connection's open), with at most ``max_header_count`` headers and ``max_header_bytes`` bytes, else
408 or 431 and the connection closed; a header line that never ends is refused once it passes the
size. Its body must be complete within ``body_timeout_s`` of the first read that left it
incomplete, plus a second for every ``body_min_rate`` bytes that came (so an upload that keeps
going is not cut): past that the app is told (``BODY_LATE`` in the request's hooks; ``read_body``
answers 408) and the connection is closed a second later, whether the app answered or not. A
timer runs only while a head or body is incomplete at the end of a read, so a request that
arrives in one piece sets none.
"""

from __future__ import annotations

import asyncio
import http
from functools import partial
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tokenway.asgi import BODY_LATE, ON_DISCONNECT, SERVER_HOOKS
from tokenway.config import Limits
from tokenway.errors import GatewayError, HeadersTooLarge, RequestTimeout

TESTED_UVICORN = ("0.55",)  # minor versions this subclass was measured and tested on


class CoalescingTransport:
    """Holds a response head back until the body's first write (or the loop's next turn); the rest is
    the transport's."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        pending = self._pending
        if pending:
            pending.append(data)
            self.flush()
        elif data.startswith(b"HTTP/"):  # a status line and headers: the body is likely written next
            pending.append(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        pending = self._pending
        if pending:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()  # what was written goes out before the FIN
        self._transport.close()

    def is_closing(self) -> bool:  # asked on every request: not through __getattr__
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:  # everything else (pause_reading, get_extra_info, ...)
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """Also offers the app a hang-up hook (``SERVER_HOOKS``) in every request's scope, and bounds slow
    and oversized requests (``limits``: the module docstring says how)."""

    def __init__(self, *args: Any, limits: Limits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits or Limits()
        self._timer: asyncio.TimerHandle | None = None  # the deadline of the head or body being read
        self._body_since = 0.0  # when the body's deadline was set
        self._in_head = False  # from a request's first byte to the end of its headers
        self._in_body = False  # from there to the end of its body
        self._read = 0  # the size of the read being parsed
        # Two counts of the head being read, neither costing work per header. _head_read: the reads since
        # it began, its first read whole; never less than the head, so only a head whose reads pass the
        # limit is measured exactly. _unparsed: the bytes read since a head or body last ended; never more
        # than the head, so a header line that never ends is refused and a good head never is.
        self._head_read = 0
        self._unparsed = 0
        self._refusal: bytes | None = None  # the answer to a head refused inside a parser callback

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        # A connection that says nothing is closed; its first head counts from here.
        self._timer = self.loop.call_later(self.limits.header_timeout_s, self._head_late)

    def data_received(self, data: bytes) -> None:
        size = self._read = len(data)
        self._unparsed += size
        if self._in_head:
            self._head_read += size
        super().data_received(data)
        if self._in_head:  # a head left incomplete by this read: bounded in size, then in time
            if self.transport.is_closing():  # refused already
                return
            if self._unparsed > self.limits.max_header_bytes:
                self._answer_and_close(self._too_large())
            elif self._timer is None:
                self._timer = self.loop.call_later(self.limits.header_timeout_s, self._head_late)
        elif self._in_body and self._timer is None:  # likewise a body
            self._body_since = self.loop.time()
            self._timer = self.loop.call_later(self.limits.body_timeout_s, self._body_late)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {SERVER_HOOKS: {}}  # type: ignore[typeddict-unknown-key]
        self._in_head = True
        self._head_read = self._read

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._timer is not None:  # asked before the call: most requests have no timer
            self._cancel_timer()
        limits = self.limits
        if len(self.headers) > limits.max_header_count:
            self._refuse(HeadersTooLarge(f"The request has more than {limits.max_header_count} headers; send fewer."))
        if self._head_read > limits.max_header_bytes and _size(self.url, self.headers) > limits.max_header_bytes:
            self._refuse(self._too_large())
        self._in_body = True
        self._unparsed = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_body = False
        self._unparsed = 0
        if self._timer is not None:  # the body's deadline, or the close after it if the body came just in time
            self._cancel_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete:
            extensions: Any = cycle.scope.get("extensions")
            on_disconnect = extensions[SERVER_HOOKS].get(ON_DISCONNECT)
            if on_disconnect is not None:
                on_disconnect()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer when the parser fails; a head refused inside a callback gets its own."""
        if self._refusal is None:
            super().send_400_response(msg)
        else:
            self.transport.write(self._refusal)
            self.transport.close()

    def _too_large(self) -> HeadersTooLarge:
        return HeadersTooLarge(f"The request line and headers are over {self.limits.max_header_bytes} bytes; "
                               "send shorter headers.")

    def _refuse(self, error: GatewayError) -> None:
        """Stop the parser (inside a callback, raising is the only way); uvicorn then calls
        ``send_400_response``, which sends this answer instead."""
        self._refusal = _answer(error)
        raise error

    def _answer_and_close(self, error: GatewayError) -> None:
        self._cancel_timer()
        self.transport.write(_answer(error))
        self.transport.close()

    def _head_late(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._in_head:
            self._answer_and_close(RequestTimeout(
                f"The request's headers did not arrive within {self.limits.header_timeout_s:g} s."))
        else:  # not a byte of a request yet: nothing to answer
            self.transport.close()

    def _body_late(self) -> None:
        """Past the deadline, unless the bytes that came earned more time (a large upload that keeps
        going at ``body_min_rate``): tell the app (``read_body`` answers 408) and wake its read; close
        the connection a second later in any case, as its unread rest of a body leaves it no use."""
        limits = self.limits
        earned = limits.body_timeout_s + self._unparsed / limits.body_min_rate - (self.loop.time() - self._body_since)
        if earned > 0:
            self._timer = self.loop.call_later(earned, self._body_late)
            return
        self._timer = self.loop.call_later(1.0, self.transport.close)
        cycle = self.cycle
        if not cycle.response_started:
            cycle.scope["extensions"][SERVER_HOOKS][BODY_LATE] = self.limits.body_timeout_s  # type: ignore[typeddict-item]
            cycle.message_event.set()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    return len(url) + sum(len(name) + len(value) for name, value in headers)


def _answer(error: GatewayError) -> bytes:
    """A whole response that closes the connection, for requests the app never sees."""
    body = error.envelope()
    phrase = http.HTTPStatus(error.status).phrase
    head = (f"HTTP/1.1 {error.status} {phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode() + body


def server_options(limits: Limits | None = None) -> dict[str, Any]:
    """How the gateway runs uvicorn (``tokenway serve``, and the tests' servers), with the config's
    bounds on slow and oversized requests (``limits``; the defaults when None)."""
    return {
        "loop": "uvloop",
        # httptools, one send per response; a partial (not a subclass made here) so that
        # `serve --workers N` can pickle it into the worker processes.
        "http": partial(CoalescingHttpToolsProtocol, limits=limits or Limits()),
        "access_log": False,  # the gateway logs each request itself
        # No logging config of uvicorn's own: its records reach the root logger, where the app's
        # JsonLog writes them as JSON lines.
        "log_config": None,
        "server_header": False,  # "server: uvicorn" says what runs here, to no client's use
        # uvicorn would believe X-Forwarded-For from 127.0.0.1 (FORWARDED_ALLOW_IPS) before the app sees
        # the request, letting any local client pick its own address; the gateway decides that itself,
        # from TOKENWAY_TRUSTED_PROXIES only (tokenway/api/client_address.py).
        "proxy_headers": False,
    }
