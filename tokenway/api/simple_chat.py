"""``POST /chat``: the minimal form. In: ``{"messages", "stream"?, "model"?}`` (the model defaults to
the first configured one). Out: ``{"content", "cached", "elapsed_ms"}``, or with ``stream: true``
SSE events ``{"delta": text}``, then that object, then ``[DONE]``."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from tokenway.api.calls import check_limits
from tokenway.config import Limits
from tokenway.context import RequestContext
from tokenway.errors import GatewayError
from tokenway.protocol import (
    SIMPLE_CHAT_REQUEST,
    SSE_DONE,
    first_choice,
    is_done,
    iter_sse_data,
    parse_body,
    sse_data,
    sse_error,
    sse_event,
)
from tokenway.providers.base import Call


def _cached(ctx: RequestContext) -> bool:
    return ctx.cache is not None and ctx.cache.status == "hit"


@dataclass(frozen=True, slots=True)
class SimpleChatWire:
    default_model: str
    endpoint: str = "simple"

    def read(self, body: bytes, limits: Limits) -> Call:
        request = parse_body(SIMPLE_CHAT_REQUEST, body, ("messages",))
        request.setdefault("model", self.default_model)
        call = Call("chat", request)
        check_limits(call, limits)
        return call

    def completion(self, body: bytes, call: Call, ctx: RequestContext) -> bytes:
        content = first_choice(body)[2].get("content") or ""
        return orjson.dumps({"content": content, "cached": _cached(ctx), "elapsed_ms": round(ctx.elapsed_ms(), 3)})

    def stream(self, call: Call, ctx: RequestContext) -> _Deltas:
        return _Deltas(ctx)

    def error(self, error: GatewayError) -> tuple[int, bytes]:
        return error.status, error.envelope()


@dataclass(slots=True)
class _Deltas:
    """A chat stream as ``{"delta"}`` events; the whole answer once the stream is done."""

    ctx: RequestContext
    parts: list[str] = field(default_factory=list)

    def feed(self, block: bytes) -> bytes:
        out = []
        for data in iter_sse_data(block):
            if is_done(data):
                final = {"content": "".join(self.parts), "cached": _cached(self.ctx),
                         "elapsed_ms": round(self.ctx.elapsed_ms(), 3)}
                out.append(sse_event(final) + SSE_DONE)
                continue
            chunk = orjson.loads(data)
            if "error" in chunk:
                out.append(sse_data(data))
                continue
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    self.parts.append(text)
                    out.append(sse_event({"delta": text}))
        return b"".join(out)

    def error(self, error: GatewayError) -> bytes:
        return sse_error(error)
