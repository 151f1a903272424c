"""The few raw-ASGI moves the data plane needs: read a bounded body, send bytes, watch for hang-ups.

The hot endpoints are plain ASGI (no framework routing, no per-request middleware stack); this
module keeps the protocol details in one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from tokenway.errors import GatewayError, PayloadTooLarge, RequestTimeout

if TYPE_CHECKING:
    from tokenway.context import RequestContext

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"
SSE = b"text/event-stream"
STREAM_HEADERS = [
    (b"content-type", SSE),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


# An ASGI extension of tokenway's own server protocol (tokenway/http_protocol.py): a dict of hooks
# in ``scope["extensions"]``, one per request. The app may put a callable under ``ON_DISCONNECT``,
# which the server calls when the client hangs up before the response is complete: it spares a
# watcher task per request. The server puts the body timeout in seconds under ``BODY_LATE`` when the
# request's body did not arrive within it, and wakes the app's pending ``receive()``.
SERVER_HOOKS = "tokenway.server"
ON_DISCONNECT = "on_disconnect"
BODY_LATE = "body_late"


class ClientDisconnected(Exception):
    """The client went away before the response was complete."""


def server_hooks(scope: Scope) -> dict[str, Any] | None:
    """The server's hooks for this request (``SERVER_HOOKS``), when the server offers them."""
    extensions = scope.get("extensions")
    return extensions.get(SERVER_HOOKS) if extensions else None


async def read_body(receive: Receive, limit: int, declared: int | None, hooks: dict[str, Any] | None = None) -> bytes:
    """The request body, read as it streams and never more than ``limit`` bytes of it: 413 as soon as
    the declared length or the bytes received pass the limit, before any more is read. 408 once the
    server says the body is late (``BODY_LATE`` in ``hooks``). Either answer closes the connection,
    whose unread rest of a body is of no use to another request."""
    if declared is not None and declared > limit:
        raise _too_large(f"The request body is {declared} bytes; the limit is {limit} bytes.")
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > limit:
            raise _too_large(f"The request body is over the limit of {limit} bytes.")
        return body
    parts = [body]
    size = len(body)
    while message.get("more_body"):
        late = hooks.get(BODY_LATE) if hooks is not None else None
        if late:
            raise RequestTimeout(f"The request body did not arrive within {late:g} s of its headers; send it "
                                 "faster.", headers={"connection": "close"})
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(f"The request body is over the limit of {limit} bytes.")
        parts.append(chunk)
    return b"".join(parts)


def _too_large(message: str) -> PayloadTooLarge:
    return PayloadTooLarge(message, headers={"connection": "close"})


async def send_bytes(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]], content_type: bytes = JSON
) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers],
    })
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: GatewayError, headers: list[tuple[bytes, bytes]]) -> None:
    await send_bytes(send, error.status, error.envelope(), [*headers, *error.headers()])


class cancel_on_disconnect:
    """Cancel the enclosed work the moment the client hangs up; raise ``ClientDisconnected`` then.

    Enter only after the request body has been read. Where the server offers the hang-up hook
    (``SERVER_HOOKS``), it calls back on the hang-up. Elsewhere a watcher task waits on
    ``receive()``, which from then on returns only when the client disconnects or the response
    is complete (the server says "disconnect" for both). The watcher is never cancelled: it ends
    by itself when the server completes the response (uvicorn, with either HTTP protocol, wakes a
    pending ``receive()`` then), and once the response is out (``ctx.responded``) or the block has
    been left, a "disconnect" is the normal end. Cancelling it instead left a cycle of exception,
    traceback and frames behind on every request, which the garbage collector then had to find.
    A class, not ``@asynccontextmanager``: it is on every request.
    """

    __slots__ = ("_ctx", "_done", "_gone", "_hook", "_receive", "_task", "_watcher")

    def __init__(self, receive: Receive, ctx: RequestContext, hook: dict[str, Any] | None = None) -> None:
        self._receive = receive
        self._ctx = ctx
        self._hook = hook
        self._gone = False
        self._done = False

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        if self._hook is not None:
            self._hook[ON_DISCONNECT] = self._hung_up
        else:
            self._watcher = asyncio.ensure_future(self._watch())  # held: the loop keeps only weak references

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._hung_up()

    def _hung_up(self) -> None:
        if not self._done and not self._ctx.responded:
            self._gone = True
            self._task.cancel()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        self._done = True
        if self._hook is not None:
            del self._hook[ON_DISCONNECT]  # the server's scope must not keep this request's task alive
        if not self._gone:
            return False
        # The hang-up cancelled us: take the cancellation back and report it as what it is.
        self._task.uncancel()
        if exc_type is None or issubclass(exc_type, asyncio.CancelledError):
            raise ClientDisconnected
        return False
