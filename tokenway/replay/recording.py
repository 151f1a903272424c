"""One recorded request: what the recorder collects while it runs, and the document kept afterwards.

Every string in the request and the answer goes through the log's redaction rules (keys, bearer
tokens, e-mail addresses, phone numbers: ``observability.logging.redact``) and is cut at
``record.max_body_chars``, so a record holds no secret the log would not and has a bounded size.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from tokenway.cache.entry import Uncacheable, assemble
from tokenway.context import RequestContext
from tokenway.observability.logging import redact
from tokenway.providers.base import Stream


@dataclass(slots=True)
class Attempt:
    """One call to a deployment (written by the recorder's policy next to the provider call)."""

    model: str | None
    deployment: str | None
    started_ms: float  # since the request began
    ms: float = 0.0  # until the answer (a stream's first block) or the error
    error: str | None = None  # the error's class, when it failed
    status: int | None = None  # the error's HTTP status


@dataclass(slots=True)
class Recording:
    """Collected while a recorded request runs (``ctx.recording``)."""

    kind: str  # chat, completions or responses (relayed natively): where a replay sends the request
    requested_model: str
    request: dict[str, Any]  # the body as the client sent it, redacted and cut
    wall_start: float = field(default_factory=time.time)
    attempts: list[Attempt] = field(default_factory=list)
    answer: bytes | None = None  # a completion's body, or a stream's blocks as they went out
    stream_blocks: list[bytes] | None = None
    stream_bytes: int = 0


def clean(value: Any, limit: int) -> Any:
    """``value`` with every string redacted and cut at ``limit`` characters (dicts and lists copied)."""
    if isinstance(value, str):
        text = redact(value)
        return text if len(text) <= limit else text[:limit] + f"…[cut: {len(text)} characters]"
    if isinstance(value, dict):
        return {k: clean(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v, limit) for v in value]
    return value


def captured(stream: Stream, recording: Recording, limit_bytes: int) -> Stream:
    """``stream``, its blocks also kept on ``recording`` (up to ``limit_bytes``) as they pass."""
    blocks: list[bytes] = []
    recording.stream_blocks = blocks

    async def relay(outer: Stream) -> AsyncIterator[bytes]:
        try:
            async for block in stream:
                outer.usage = stream.usage  # the source notes usage as it sees it; the writer reads the outer
                if recording.stream_bytes < limit_bytes:
                    blocks.append(block)
                    recording.stream_bytes += len(block)
                yield block
            outer.usage = stream.usage
        finally:
            await stream.aclose()

    outer = Stream(relay)
    outer.usage = stream.usage
    return outer


def document(ctx: RequestContext, recording: Recording, limit: int, finished: float) -> dict[str, Any]:
    """The record kept for ``ctx``: request, routing story, answer, usage, cost and timings."""
    cost = ctx.cost_nanos
    if cost is None and ctx.target is not None:
        cost = ctx.target.rates.usage_nanos(ctx.usage)
    return {
        "request_id": ctx.request_id, "ts": recording.wall_start, "endpoint": ctx.endpoint, "kind": recording.kind,
        "stream": ctx.stream,
        "key": ctx.key_alias, "key_id": ctx.key.id if ctx.key is not None else None,
        "model": recording.requested_model,
        "prompt": {"id": ctx.prompt[0], "version": ctx.prompt[1]} if ctx.prompt else None,
        "request": recording.request,
        "routing": {
            "answered_by": {"model": ctx.model, "deployment": ctx.deployment},
            "attempts": [_attempt(a) for a in recording.attempts],
            "retries": sum(1 for a, b in zip(recording.attempts, recording.attempts[1:], strict=False)
                           if a.model == b.model),
            "fallbacks": list(dict.fromkeys(
                a.model for a in recording.attempts if a.model != recording.requested_model)),
            "cache": None if ctx.cache is None else {"status": ctx.cache.status, "match": ctx.cache.match},
            "guards": ctx.guard_actions,
        },
        "response": {"status": ctx.status, "error_type": ctx.error_type, "body": _answer(recording, ctx, limit)},
        "usage": ctx.usage.as_dict() if ctx.usage is not None else None,
        "cost_usd": None if cost is None else cost / 1e9,
        "timings": {
            "latency_ms": _ms(finished - ctx.started),
            "ttft_ms": _ms(ctx.first_token_at - ctx.started) if ctx.first_token_at else None,
            "queue_ms": _ms(ctx.queue_wait_s) if ctx.queue_wait_s is not None else None,
            "upstream_ms": sum(a.ms for a in recording.attempts),
        },
    }


def _attempt(attempt: Attempt) -> dict[str, Any]:
    out: dict[str, Any] = {"model": attempt.model, "deployment": attempt.deployment,
                           "started_ms": attempt.started_ms, "ms": attempt.ms,
                           "outcome": "answered" if attempt.error is None else "failed"}
    if attempt.error is not None:
        out["error"], out["status"] = attempt.error, attempt.status
    return out


def _answer(recording: Recording, ctx: RequestContext, limit: int) -> Any:
    """The answer as JSON: a completion's body, or a stream assembled into one (raw text if it broke off)."""
    body = recording.answer
    if recording.stream_blocks is not None:
        try:
            body = assemble(recording.kind, recording.stream_blocks, ctx.usage)
        except (Uncacheable, orjson.JSONDecodeError, ValueError):
            return {"stream_text": clean(b"".join(recording.stream_blocks).decode("utf-8", "replace"), limit)}
    if body is None:
        return None
    try:
        return clean(orjson.loads(body), limit)
    except orjson.JSONDecodeError:
        return {"text": clean(body.decode("utf-8", "replace"), limit)}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
