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
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tokenway.asgi import ON_DISCONNECT, SERVER_HOOKS

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

    def __getattr__(self, name: str) -> Any:  # everything else (pause_reading, get_extra_info, ...)
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """Also offers the app a hang-up hook (``SERVER_HOOKS``) in every request's scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {SERVER_HOOKS: {}}  # type: ignore[typeddict-unknown-key]

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
        # No logging config of uvicorn's own: its records reach the root logger, where the app's
        # JsonLog writes them as JSON lines.
        "log_config": None,
        "server_header": False,  # "server: uvicorn" says what runs here, to no client's use
        # uvicorn would believe X-Forwarded-For from 127.0.0.1 (FORWARDED_ALLOW_IPS) before the app sees
        # the request, letting any local client pick its own address; the gateway decides that itself,
        # from TOKENWAY_TRUSTED_PROXIES only (tokenway/api/client_address.py).
        "proxy_headers": False,
    }
