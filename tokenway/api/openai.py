"""The data plane: every endpoint that runs the policy list (``/v1/chat/completions``,
``/v1/completions``, ``/chat``, and the front doors of other wire formats).

Each endpoint is a raw ASGI handler over one ``WireFormat`` (``api/wire.py``): read the body
(bounded), identify the caller, read the body into a ``Call`` in one pass, build the request
context, run the policy list, then send the answer or relay the stream, translated by the wire
format. Whatever happens, the client gets its API's error envelope and the log gets one line.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from tokenway.api.calls import read_call
from tokenway.api.client_address import TrustedProxies
from tokenway.api.simple_chat import SimpleChatWire
from tokenway.api.wire import OpenAIWire, WireFormat
from tokenway.asgi import (
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    cancel_on_disconnect,
    read_body,
    send_bytes,
    server_hooks,
)
from tokenway.config import GatewayConfig
from tokenway.context import RequestContext
from tokenway.errors import GatewayError, InternalError, Overloaded
from tokenway.ids import IdGenerator
from tokenway.observability.logging import JsonLog
from tokenway.observability.metrics import Metrics
from tokenway.observability.tracing import Tracing
from tokenway.policies.base import Handler
from tokenway.providers.base import Call, Completion, Stream
from tokenway.streaming import StreamLimits, write_stream

Endpoint = Callable[[Scope, Receive, Send], Awaitable[None]]


class DataPlane:
    """The endpoints of the data plane over one composed policy handler."""

    def __init__(
        self, config: GatewayConfig, handle: Handler, log: JsonLog, metrics: Metrics | None,
        is_ready: Callable[[], bool], tracing: Tracing | None = None, proxies: TrustedProxies | None = None,
        identify: Callable[[RequestContext], object] | None = None,
    ) -> None:
        self._config = config
        # Who is calling, checked before the body is parsed: a caller without a valid key gets 401 (as
        # OpenAI answers), whatever it sent, and costs no parsing. The access policy checks again with the model.
        self._identify = identify
        self._proxies = proxies  # None: no trusted proxies, the socket's peer is the client
        self._tracing = tracing
        self._new_request_id = IdGenerator("req_")
        self._metrics = metrics
        self._overhead_header = config.observability.overhead_header
        self._limits = config.limits
        self._handle = handle
        self._log = log
        self._is_ready = is_ready
        self._default_model = config.models[0].name if config.models else ""

    def routes(self, wires: dict[str, WireFormat] | None = None) -> dict[str, Endpoint]:
        """Every data-plane path and its endpoint: OpenAI's own, ``/chat``, and the front doors in ``wires``."""
        doors: dict[str, WireFormat] = {
            "/v1/chat/completions": OpenAIWire("chat", partial(read_call, "chat")),
            "/v1/completions": OpenAIWire("completions", partial(read_call, "completions")),
            "/chat": SimpleChatWire(self._default_model),
            **(wires or {}),
        }
        return {path: partial(self._serve, wire) for path, wire in doors.items()}

    async def _serve(self, wire: WireFormat, scope: Scope, receive: Receive, send: Send) -> None:
        ctx, declared_length = request_context(scope, wire.endpoint, self._new_request_id)
        if self._proxies is not None and ctx.client_ip is not None:
            ctx.client_ip = self._proxies.client(ctx.client_ip, scope["headers"])
        hook = server_hooks(scope)
        if self._tracing is None:
            await self._respond(wire, ctx, declared_length, receive, send, hook)
            return
        with self._tracing.request_span(ctx) as span:
            ctx.trace_id = self._tracing.trace_id(span)
            await self._respond(wire, ctx, declared_length, receive, send, hook)
            self._tracing.finish_request(span, ctx)

    async def _respond(
        self, wire: WireFormat, ctx: RequestContext, declared_length: int | None, receive: Receive, send: Send,
        hook: dict[str, Any] | None,
    ) -> None:
        headers = [(b"x-request-id", ctx.request_id.encode())]
        if self._metrics is not None:
            self._metrics.request_started(ctx.endpoint)
        try:
            if not self._is_ready():
                raise Overloaded("This gateway is not taking new calls: it is starting up (loading models) or "
                                 "draining before a restart. Retry shortly.", retry_after=2)
            body = await read_body(receive, self._limits.max_body_bytes, declared_length, hook)
            if self._identify is not None:
                self._identify(ctx)
            call = wire.read(body, self._limits)
            prepare = getattr(wire, "prepare", None)  # a StatefulWire completes the call from the state it keeps
            if prepare is not None:
                await prepare(call, ctx)
            ctx.stream = call.stream
            if self._log.content:
                ctx.content = _content_for_log(call)
            async with cancel_on_disconnect(receive, ctx, hook):
                answer = await self._handle(ctx, call)
                if ctx.deployment is not None:  # which backend answered (none for a cache hit)
                    headers.append((b"x-tokenway-deployment", ctx.deployment.encode()))
                if isinstance(answer, Stream):
                    await write_stream(answer, send, ctx, self._stream_limits(ctx), headers + ctx.response_headers,
                                       wire.stream(call, ctx))
            if isinstance(answer, Completion):
                ctx.usage = answer.usage
                reply = wire.completion(answer.body, call, ctx)
                if self._overhead_header:
                    headers.append(_overhead_header(ctx))
                await send_bytes(send, 200, reply, headers + ctx.response_headers + answer.headers)
        except ClientDisconnected:
            ctx.status, ctx.error_type = 499, "ClientDisconnected"
        except GatewayError as error:
            ctx.status, ctx.error_type = error.status, type(error).__name__
            await _send_error(send, wire, error, headers)
        except Exception as exc:  # a bug: never a traceback to the client, always one in the log
            ctx.status, ctx.error_type = 500, type(exc).__name__
            ctx.exception = exc
            await _send_error(send, wire, InternalError(f"Internal error; request id {ctx.request_id}."), headers)
        finally:
            await end_request(ctx, self._metrics, self._log)

    def _stream_limits(self, ctx: RequestContext) -> StreamLimits:
        target = ctx.target  # the deployment of the last attempt: listed, or a discovered worker
        heartbeat = self._config.streaming.heartbeat_s
        if target is None:
            return StreamLimits(60.0, 30.0, heartbeat, self._overhead_header)
        timeouts = target.config.timeouts
        return StreamLimits(timeouts.first_token, timeouts.idle, heartbeat, self._overhead_header)

async def _send_error(send: Send, wire: WireFormat, error: GatewayError, headers: list[tuple[bytes, bytes]]) -> None:
    status, body = wire.error(error)
    await send_bytes(send, status, body, [*headers, *error.headers()])


def _content_for_log(call: Call) -> str:
    """What the client asked, for content logging (opt-in; redacted and truncated by the log)."""
    if call.kind == "completions":
        return str(call.body.get("prompt"))[:2000]
    return " | ".join(f"{m.get('role')}: {m.get('content')}" for m in call.body.get("messages", []))[-2000:]


def _overhead_header(ctx: RequestContext) -> tuple[bytes, bytes]:
    overhead = ctx.overhead(time.perf_counter()) or 0.0
    return (b"x-tokenway-overhead-ms", f"{overhead * 1000:.3f}".encode())


async def end_request(ctx: RequestContext, metrics: Metrics | None, log: JsonLog) -> None:
    """Whatever happened: the finalizers (settle, ledger), the metrics and the log line."""
    if ctx.finalizers:
        await run_finalizers(ctx)
    end = time.perf_counter()
    if metrics is not None:
        metrics.request_finished(ctx, end)
    log.request(ctx, end)


async def run_finalizers(ctx: RequestContext) -> None:
    """The context's finalizers, last deferred first; one that fails is noted and the rest still run."""
    for finalizer in reversed(ctx.finalizers):
        try:
            result = finalizer(ctx)
            if result is not None:
                await result
        except Exception as exc:  # one failing finalizer must not skip the others, nor the log line
            ctx.finalizer_errors.append(repr(exc))


def request_context(scope: Scope, endpoint: str, new_id: IdGenerator) -> tuple[RequestContext, int | None]:
    """The request context from the headers (one pass), and the declared body length."""
    request_id = api_key = cache_control = session = tier = None
    priority = 0
    length: int | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                api_key = token.strip()
        elif (name == b"api-key" or name == b"x-api-key") and api_key is None:  # Azure's, Anthropic's
            api_key = value.decode("latin-1").strip()
        elif name == b"x-request-id":
            request_id = _safe_request_id(value)
        elif name == b"cache-control":
            cache_control = value.decode("latin-1").lower()
        elif name == b"x-tokenway-priority":
            priority = _priority(value)
        elif name == b"x-tokenway-session":  # sticks a caller to one release version (tokenway/releases)
            session = value.decode("latin-1")[:128]
        elif name == b"x-tokenway-tier":
            tier = value.decode("latin-1")
        elif name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = None
    client = scope.get("client")
    ctx = RequestContext(
        request_id=request_id or new_id(),
        endpoint=endpoint,
        api_key=api_key,
        client_ip=client[0] if client else None,
        cache_control=cache_control,
        priority=priority,
        session=session,
        tier_override=tier,
    )
    return ctx, length


def _priority(value: bytes) -> int:
    # Bounded so one client cannot claim "infinitely urgent"; keys may carry their own later.
    try:
        return max(-10, min(10, int(value)))
    except ValueError:
        return 0


def _safe_request_id(value: bytes) -> str | None:
    # Honour the caller's id, but never let it inject anything into headers or logs.
    if 0 < len(value) <= 128 and all(33 <= b < 127 for b in value):
        return value.decode("ascii")
    return None
