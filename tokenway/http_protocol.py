"""uvicorn's httptools protocol, with the writes of one event-loop turn sent to the socket together,
a hang-up callback for the app instead of a watcher task per request, and header lines the app
rendered itself put in the response head as they are.

uvicorn writes a response's status line and headers, then its body, each with its own
``transport.write``; on an idle socket each one is a ``send`` system call, and on a small JSON
answer the two calls cost more CPU than most of the gateway's own work. Here the head is held
back and goes out with the first body write: a non-streaming response leaves in one ``send``.
A head that no body follows in the same turn of the event loop (a stream waiting for its first
chunk) is sent at the start of the next turn; body writes are never held, so a stream's chunks
leave exactly when they are written.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tokenway.asgi import HEAD_LINES, ON_DISCONNECT, SERVER_HOOKS


class CoalescingTransport:
    """Holds a response head back until the body's first write (or the loop's next turn); the rest is
    the transport's."""

    __slots__ = ("_head_lines", "_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._head_lines = b""

    def write(self, data: bytes) -> None:
        head = data.startswith(b"HTTP/")  # a status line and headers
        # The app's own lines go before the blank line that ends the final head; never into an
        # interim one ("HTTP/1.1 100 Continue", which may itself still be held here).
        if head and self._head_lines and data[9:10] != b"1":
            data = data[:-2] + self._head_lines + b"\r\n"
            self._head_lines = b""
        pending = self._pending
        if pending:
            pending.append(data)
            self.flush()
        elif head:  # the body is likely written next
            pending.append(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def set_head_lines(self, lines: bytes) -> None:
        """Lines for the next response head. A connection runs one request's app at a time (uvicorn
        queues pipelined ones), and that app sets them just before it starts its response."""
        self._head_lines = lines

    def response_complete(self) -> None:
        """Lines no head took (the response never started) belong to no later response."""
        self._head_lines = b""

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

    def __getattr__(self, name: str) -> Any:  # everything else (pause_reading, get_extra_info, ...)
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """Also offers the app its hooks (``SERVER_HOOKS``: a hang-up callback, head lines) in every
    request's scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        coalescing = self._coalescing = CoalescingTransport(transport, self.loop)
        self._set_head_lines = coalescing.set_head_lines  # made once: offered to every request
        super().connection_made(coalescing)  # type: ignore[arg-type]

    def on_message_begin(self) -> None:
        super().on_message_begin()
        hooks: dict[str, Any] = {HEAD_LINES: self._set_head_lines}
        self.scope["extensions"] = {SERVER_HOOKS: hooks}  # type: ignore[typeddict-unknown-key,dict-item]

    def on_response_complete(self) -> None:
        self._coalescing.response_complete()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete:
            extensions: Any = cycle.scope.get("extensions")
            on_disconnect = extensions[SERVER_HOOKS].get(ON_DISCONNECT)
            if on_disconnect is not None:
                on_disconnect()


def server_options() -> dict[str, Any]:
    """How the gateway runs uvicorn (``tokenway serve``, and the tests' servers)."""
    return {
        "loop": "uvloop",
        "http": CoalescingHttpToolsProtocol,  # httptools, one send per response
        "access_log": False,  # the gateway logs each request itself
        "server_header": False,  # "server: uvicorn" says what runs here, to no client's use
    }
