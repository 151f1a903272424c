"""uvicorn's httptools protocol, with the writes of one event-loop turn sent to the socket together,
and a hang-up callback for the app instead of a watcher task per request.

uvicorn writes a response's status line and headers, then its body, each with its own
``transport.write``; on an idle socket each one is a ``send`` system call, and on a small JSON
answer the two calls cost more CPU than most of the gateway's own work. Here the writes made
during one turn of the event loop are joined and sent once, at the start of the next turn: a
non-streaming response leaves in one ``send``, and a stream's chunks still leave as they come
(one turn later at most, before the loop next waits for I/O).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tokenway.asgi import DISCONNECT_EXTENSION


class CoalescingTransport:
    """Holds writes until the loop's next turn, then sends them in one call; the rest is the transport's."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

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
    """Also offers the app a hang-up callback (``DISCONNECT_EXTENSION``) in every request's scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {DISCONNECT_EXTENSION: {}}  # type: ignore[typeddict-unknown-key]

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete:
            extensions: Any = cycle.scope.get("extensions")
            on_disconnect = extensions[DISCONNECT_EXTENSION].get("on_disconnect")
            if on_disconnect is not None:
                on_disconnect()
