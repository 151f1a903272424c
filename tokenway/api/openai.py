"""The data plane: ``/v1/chat/completions``, ``/v1/completions`` and the simple ``/chat``.

Each endpoint is a raw ASGI handler: read the body (bounded), validate it in one pass, build
the request context, run the policy list, then send the JSON or relay the stream. Whatever
happens, the client gets OpenAI's error envelope and the log gets one line.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from pydantic import TypeAdapter

from tokenway.api.client_address import TrustedProxies
from tokenway.asgi import (
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    cancel_on_disconnect,
    read_body,
    send_bytes,
    send_error,
    server_hooks,
)
from tokenway.config import GatewayConfig, Limits
from tokenway.context import RequestContext
from tokenway.errors import GatewayError, InternalError, InvalidRequest, Overloaded, UpstreamError
from tokenway.ids import IdGenerator
from tokenway.observability.logging import JsonLog
from tokenway.observability.metrics import Metrics
from tokenway.observability.tracing import Tracing
from tokenway.policies.base import Handler
from tokenway.protocol import (
    CHAT_REQUEST,
    COMPLETION_REQUEST,
    SIMPLE_CHAT_REQUEST,
    SSE_DONE,
    is_done,
    iter_sse_data,
    parse_body,
    sse_data,
    sse_event,
)
from tokenway.providers.base import Call, Completion, Stream
from tokenway.streaming import StreamLimits, write_stream
from tokenway.usage.cost import prompt_size, tokens_for_chars

Endpoint = Callable[[Scope, Receive, Send], Awaitable[None]]


class DataPlane:
    """The OpenAI-compatible endpoints over one composed policy handler."""

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

    def routes(self) -> dict[str, Endpoint]:
        return {
            "/v1/chat/completions": self.chat_completions,
            "/v1/completions": self.completions,
            "/chat": self.simple_chat,
        }

    async def chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._serve(scope, receive, send, "chat", CHAT_REQUEST, ("model", "messages"))

    async def completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._serve(scope, receive, send, "completions", COMPLETION_REQUEST, ("model", "prompt"))

    async def simple_chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._serve(scope, receive, send, "simple", SIMPLE_CHAT_REQUEST, ("messages",))

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, kind: str, adapter: TypeAdapter[Any],
        required: tuple[str, ...],
    ) -> None:
        ctx, declared_length = _context(scope, kind, self._new_request_id)
        if self._proxies is not None and ctx.client_ip is not None:
            ctx.client_ip = self._proxies.client(ctx.client_ip, scope["headers"])
        hook = server_hooks(scope)
        if self._tracing is None:
            await self._respond(ctx, declared_length, receive, send, hook, adapter, required)
            return
        with self._tracing.request_span(ctx) as span:
            ctx.trace_id = self._tracing.trace_id(span)
            await self._respond(ctx, declared_length, receive, send, hook, adapter, required)
            self._tracing.finish_request(span, ctx)

    async def _respond(
        self, ctx: RequestContext, declared_length: int | None, receive: Receive, send: Send,
        hook: dict[str, Any] | None, adapter: TypeAdapter[Any], required: tuple[str, ...],
    ) -> None:
        kind = ctx.endpoint
        headers = [(b"x-request-id", ctx.request_id.encode())]
        if self._metrics is not None:
            self._metrics.request_started(kind)
        try:
            if not self._is_ready():
                raise Overloaded("This gateway is not taking new calls: it is starting up (loading models) or "
                                 "draining before a restart. Retry shortly.", retry_after=2)
            body = await read_body(receive, self._limits.max_body_bytes, declared_length, hook)
            if self._identify is not None:
                self._identify(ctx)
            request = parse_body(adapter, body, required)
            simple = kind == "simple"
            if simple:
                request.setdefault("model", self._default_model)
            call = Call("chat" if simple else kind, request)  # type: ignore[arg-type]
            check_limits(call, self._limits)
            ctx.stream = call.stream
            if self._log.content:
                ctx.content = _content_for_log(call)
            async with cancel_on_disconnect(receive, ctx, hook):
                answer = await self._handle(ctx, call)
                if simple:
                    answer = _simple_answer(answer, ctx)
                if isinstance(answer, Stream):
                    await write_stream(
                        answer, send, ctx, self._stream_limits(ctx), headers + ctx.response_headers)
            if isinstance(answer, Completion):
                ctx.usage = answer.usage
                if self._overhead_header:
                    headers.append(_overhead_header(ctx))
                await send_bytes(send, 200, answer.body, headers + ctx.response_headers + answer.headers)
        except ClientDisconnected:
            ctx.status, ctx.error_type = 499, "ClientDisconnected"
        except GatewayError as error:
            ctx.status, ctx.error_type = error.status, type(error).__name__
            await send_error(send, error, headers)
        except Exception as exc:  # a bug: never a traceback to the client, always one in the log
            ctx.status, ctx.error_type = 500, type(exc).__name__
            ctx.exception = exc
            await send_error(send, InternalError(f"Internal error; request id {ctx.request_id}."), headers)
        finally:
            await end_request(ctx, self._metrics, self._log)

    def _stream_limits(self, ctx: RequestContext) -> StreamLimits:
        target = ctx.target  # the deployment of the last attempt: listed, or a discovered worker
        heartbeat = self._config.streaming.heartbeat_s
        if target is None:
            return StreamLimits(60.0, 30.0, heartbeat, self._overhead_header)
        timeouts = target.config.timeouts
        return StreamLimits(timeouts.first_token, timeouts.idle, heartbeat, self._overhead_header)

REQUESTS: dict[str, tuple[TypeAdapter[Any], tuple[str, ...]]] = {
    "chat": (CHAT_REQUEST, ("model", "messages")),
    "completions": (COMPLETION_REQUEST, ("model", "prompt")),
}


def read_call(kind: str, body: bytes, limits: Limits) -> Call:
    """A ``chat`` or ``completions`` body checked as its live endpoint checks it (the job API submits with it)."""
    adapter, required = REQUESTS[kind]
    call = Call(kind, parse_body(adapter, body, required))  # type: ignore[arg-type]
    check_limits(call, limits)
    return call


def check_limits(call: Call, limits: Limits) -> None:
    """The gateway's bounds on a request (400 naming the field), and its prompt estimate, counted once."""
    body = call.body
    if call.kind == "chat":
        messages = body["messages"]
        if len(messages) > limits.max_messages:
            raise InvalidRequest(
                f"Too many messages: {len(messages)}; the limit is {limits.max_messages}.", param="messages"
            )
    chars, count = prompt_size(call)
    call.prompt_estimate = tokens_for_chars(chars, count)  # the limits and the budget need not count again
    param = "prompt" if count is None else "messages"
    if chars > limits.max_total_chars:
        raise InvalidRequest(
            f"The input is {chars} characters; the limit is {limits.max_total_chars}.", param=param,
            code="context_length_exceeded",
        )
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if value is not None and value > limits.max_tokens:
            raise InvalidRequest(
                f"'{field}' is {value}; this gateway allows at most {limits.max_tokens}.", param=field
            )


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


def _context(scope: Scope, endpoint: str, new_id: IdGenerator) -> tuple[RequestContext, int | None]:
    """The request context from the headers (one pass), and the declared body length."""
    request_id = api_key = cache_control = None
    priority = 0
    length: int | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                api_key = token.strip()
        elif name == b"api-key" and api_key is None:
            api_key = value.decode("latin-1").strip()
        elif name == b"x-request-id":
            request_id = _safe_request_id(value)
        elif name == b"cache-control":
            cache_control = value.decode("latin-1").lower()
        elif name == b"x-tokenway-priority":
            priority = _priority(value)
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


def _simple_answer(answer: Completion | Stream, ctx: RequestContext) -> Completion | Stream:
    """``/chat``'s shape: ``{"content", "cached", "elapsed_ms"}``, or SSE deltas then that object."""
    cached = ctx.cache is not None and ctx.cache.status == "hit"
    if isinstance(answer, Completion):
        try:
            content = orjson.loads(answer.body)["choices"][0]["message"].get("content") or ""
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            raise UpstreamError("The backend's answer had no message content.") from None
        body = {"content": content, "cached": cached, "elapsed_ms": round(ctx.elapsed_ms(), 3)}
        return Completion(body=orjson.dumps(body), usage=answer.usage, headers=answer.headers)

    async def deltas(stream: Stream) -> AsyncIterator[bytes]:
        parts: list[str] = []
        try:
            async for block in answer:
                stream.usage = answer.usage  # known so far: a stream cut short is billed from it
                out = []
                for data in iter_sse_data(block):
                    if is_done(data):
                        continue
                    chunk = orjson.loads(data)
                    if "error" in chunk:
                        out.append(sse_data(data))
                        continue
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            parts.append(text)
                            out.append(sse_event({"delta": text}))
                if out:
                    yield b"".join(out)
        finally:
            stream.usage = answer.usage
            await answer.aclose()
        final = {"content": "".join(parts), "cached": cached, "elapsed_ms": round(ctx.elapsed_ms(), 3)}
        yield sse_event(final) + SSE_DONE

    return Stream(deltas)
