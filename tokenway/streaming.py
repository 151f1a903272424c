"""Writing a ``Stream`` to the client: pass-through, heartbeats, timeouts, errors as SSE events.

Response headers go out with the first upstream bytes, or with the first heartbeat if the
first token is slow; until then a failure can still be a plain HTTP error with its status.
After that, a failure ends the stream with an OpenAI-style ``data: {"error": ...}`` event.

The writer also counts the completion tokens it hands to the client (``ctx.delivered_tokens``):
a stream that ends early (a hang-up, a broken backend, a timeout) is billed from that count.

A front door with a wire format of its own (Responses, Anthropic's Messages) passes a
``StreamTranslation``: the writer reads each internal block first (tokens, ``[DONE]``), then sends
what the translation makes of it, and its events for an error.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson

from tokenway.api.wire import StreamTranslation
from tokenway.asgi import STREAM_HEADERS, Send
from tokenway.context import RequestContext
from tokenway.errors import GatewayError, InternalError, UpstreamError, UpstreamTimeout
from tokenway.protocol import SSE_HEARTBEAT, ends_stream, iter_sse_data, sse_error
from tokenway.providers.base import Stream


@dataclass(slots=True)
class StreamLimits:
    first_token: float
    idle: float
    heartbeat: float
    overhead_header: bool = True


class _Writer:
    __slots__ = ("ctx", "finished", "headers", "limits", "send", "started", "stream", "translation")

    def __init__(
        self, stream: Stream, send: Send, ctx: RequestContext, limits: StreamLimits, headers: list[tuple[bytes, bytes]],
        translation: StreamTranslation | None,
    ) -> None:
        self.stream, self.send, self.ctx, self.limits, self.headers = stream, send, ctx, limits, headers
        self.translation = translation
        self.started = False
        self.finished = False

    async def start(self) -> None:
        if not self.started:
            self.started = True
            headers = [*STREAM_HEADERS, *self.headers]
            if self.limits.overhead_header:
                overhead = self.ctx.overhead(time.perf_counter())
                if overhead is not None:
                    headers.append((b"x-tokenway-overhead-ms", f"{overhead * 1000:.3f}".encode()))
            await self.send({"type": "http.response.start", "status": 200, "headers": headers})

    async def body(self, data: bytes) -> None:
        """Send one internal block (translated, if the front door translates)."""
        out = data if self.translation is None else self.translation.feed(data)
        # The block that carries [DONE] also ends the response: one write fewer per stream.
        if ends_stream(data):
            self.finished = self.ctx.responded = True
            await self.send({"type": "http.response.body", "body": out, "more_body": False})
        elif out:
            await self.send({"type": "http.response.body", "body": out, "more_body": True})
        # Counted once ``send`` has taken the block: a hang-up cancels the wait before that.
        self.ctx.delivered_tokens += completion_tokens(data)

    async def raw(self, data: bytes) -> None:
        """Send bytes of the client's own format as they are (a heartbeat, an error's events)."""
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def error(self, error: GatewayError) -> None:
        await self.raw(sse_error(error) if self.translation is None else self.translation.error(error))

    async def first_block(self) -> bytes | None:
        """Await the first bytes, sending ``: keep-alive`` comments while they take their time."""
        if self.stream.ready():  # the usual case: routing's probe waited for them
            try:
                return await self.stream.__anext__()
            except StopAsyncIteration:
                return None
        loop = asyncio.get_running_loop()
        budget = self.limits.first_token
        remaining = self.ctx.remaining()
        if remaining is not None:
            budget = min(budget, remaining)
        deadline = loop.time() + budget
        pending = asyncio.ensure_future(self.stream.__anext__())
        try:
            while True:
                wait = min(self.limits.heartbeat, deadline - loop.time())
                if wait <= 0:
                    raise UpstreamTimeout(f"No first token within {budget:.3g}s.")
                done, _ = await asyncio.wait((pending,), timeout=wait)
                if done:
                    try:
                        return pending.result()
                    except StopAsyncIteration:
                        return None
                if loop.time() < deadline:
                    await self.start()
                    await self.raw(SSE_HEARTBEAT)
        finally:
            if not pending.done():
                pending.cancel()
                # let the cancellation land inside the generator before anyone closes it
                await asyncio.wait((pending,))

    async def rest(self) -> None:
        """Relay the remaining blocks, each within the idle limit, all within the total deadline."""
        loop = asyncio.get_running_loop()
        remaining = self.ctx.remaining()
        total_deadline = None if remaining is None else loop.time() + remaining
        idle = self.limits.idle
        gaps = self.ctx.chunk_gaps
        last = time.perf_counter()
        try:
            async with asyncio.timeout(None) as timer:
                while True:
                    when = loop.time() + idle
                    if total_deadline is not None and total_deadline < when:
                        when = total_deadline
                    timer.reschedule(when)
                    try:
                        block = await self.stream.__anext__()
                    except StopAsyncIteration:
                        return
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now
                    await self.body(block)
                    if self.finished:
                        return
        except TimeoutError:
            if total_deadline is not None and loop.time() >= total_deadline - 1e-3:
                raise UpstreamTimeout("The request ran past its total time limit.") from None
            raise UpstreamTimeout(f"The backend sent nothing for {idle:.3g}s in the middle of the stream.") from None


def completion_tokens(block: bytes) -> int:
    """The completion tokens in a block of a stream: one per chunk choice that carries generated text.

    OpenAI, vLLM, SGLang and the embedded model send one token per chunk, so a choice whose delta
    has content, reasoning, a refusal or tool-call arguments (or, for completions, text) is one
    token; a role, a finish reason, usage or an error is none. ``/chat``'s ``{"delta": text}``
    events are one each.
    """
    tokens = 0
    for payload in iter_sse_data(block):
        if payload.startswith(b"{"):  # a chunk is a JSON object ([DONE] is not)
            try:
                tokens += _chunk_tokens(orjson.loads(payload))
            except (ValueError, AttributeError, TypeError):
                pass  # not JSON, or not shaped like a chunk: the client got it as it came, nothing to count
    return tokens


def _chunk_tokens(chunk: dict[str, Any]) -> int:
    choices = chunk.get("choices")
    if choices is None:  # /chat's own events
        delta = chunk.get("delta")
        return 1 if isinstance(delta, str) and delta else 0
    tokens = 0
    for choice in choices:
        delta = choice.get("delta")
        if delta is None:  # a completions chunk
            tokens += bool(choice.get("text"))
        elif (delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")
              or delta.get("refusal") or _has_arguments(delta)):
            tokens += 1
    return tokens


def _has_arguments(delta: dict[str, Any]) -> bool:
    calls = delta.get("tool_calls")
    if calls:
        return any((call.get("function") or {}).get("arguments") for call in calls)
    call = delta.get("function_call")
    return bool(call and call.get("arguments"))


async def write_stream(
    stream: Stream, send: Send, ctx: RequestContext, limits: StreamLimits, headers: list[tuple[bytes, bytes]],
    translation: StreamTranslation | None = None,
) -> None:
    """Send ``stream`` as an SSE response. Raises ``GatewayError`` only if nothing was sent yet."""
    writer = _Writer(stream, send, ctx, limits, headers, translation)
    try:
        first = await writer.first_block()
        if first is None:
            raise UpstreamError("The backend ended the stream before sending anything.")
        ctx.upstream_first_at = time.perf_counter()
        await writer.start()
        ctx.first_token_at = time.perf_counter()
        await writer.body(first)
        if not writer.finished:
            await writer.rest()
    except GatewayError as error:
        ctx.status, ctx.error_type = error.status, type(error).__name__
        ctx.failed_mid_stream = True
        if not writer.started:
            raise
        await writer.error(error)
    except (asyncio.CancelledError, GeneratorExit):
        raise
    except Exception as exc:  # a bug: the client gets an error event, the log gets the traceback
        if not writer.started:
            raise
        ctx.status, ctx.error_type = 500, type(exc).__name__
        ctx.exception = exc
        await writer.error(InternalError("Internal error."))
    finally:
        ctx.usage = stream.usage
        await stream.aclose()
    if not writer.finished:
        ctx.responded = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
