"""JSON lines to stdout: one per request, plus lifecycle events.

Lines are built with orjson and appended to a buffer that a background task flushes a few
times a second, so a request pays for a dict and a serialisation, not for a write syscall.
Message content and keys are never logged unless content logging is turned on, and then
redacted.
"""

from __future__ import annotations

import asyncio
import random
import re
import sys
import time
import traceback
from typing import IO, Any

import orjson

from tokenway.context import RequestContext

_REDACTIONS = [
    (re.compile(r"\b(sk|pk|rk|tw)-[A-Za-z0-9_\-]{8,}"), "[key]"),
    (re.compile(r"\bBearer\s+\S+", re.I), "Bearer [key]"),
    (re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"), "[email]"),
    (re.compile(r"(?<!\w)\+?\d[\d\s().-]{7,}\d(?!\w)"), "[phone]"),
]


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def redact(text: str) -> str:
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class JsonLog:
    """Buffered JSON-lines writer. ``start()``/``aclose()`` run the flusher inside the app's lifespan."""

    def __init__(
        self, out: IO[bytes] | None = None, *, sample: float = 1.0, requests: bool = True, content: bool = False,
        level: str = "info",
    ) -> None:
        self._out = out or sys.stdout.buffer
        self._min_level = _LEVELS.get(level, 20)
        self._buffer: list[bytes] = []
        self._sample = sample
        self._requests = requests
        self.content = content
        self._flusher: asyncio.Task[None] | None = None
        self._second, self._second_text = -1, ""  # strftime once a second, not once a line

    def start(self) -> None:
        self._flusher = asyncio.get_running_loop().create_task(self._flush_periodically())

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        self.flush()

    def event(self, event: str, level: str = "info", **fields: Any) -> None:
        if _LEVELS.get(level, 20) < self._min_level:
            return
        self._write({"ts": self._now(), "level": level, "event": event, **fields})
        if self._flusher is None:
            self.flush()  # before start or after shutdown: write through

    def request(self, ctx: RequestContext, end: float) -> None:
        failed = ctx.status >= 400
        if self._min_level > (40 if ctx.status >= 500 else 20):
            return
        if not self._requests or (not failed and self._sample < 1.0 and random.random() >= self._sample):
            return
        line: dict[str, Any] = {
            "ts": self._now(),
            "level": "error" if ctx.status >= 500 else "info",
            "event": "request",
            "request_id": ctx.request_id,
            "endpoint": ctx.endpoint,
            "model": ctx.model,
            "deployment": ctx.deployment,
            "key": ctx.key_alias,
            "stream": ctx.stream,
            "status": ctx.status,
            "latency_ms": _ms(end - ctx.started),
            "ttft_ms": _ms(ctx.first_token_at - ctx.started) if ctx.first_token_at else None,
            "upstream_ttft_ms": _ms(_upstream_ttft(ctx)),
            "overhead_ms": _ms(ctx.overhead(end)),
            "attempts": ctx.attempts,
        }
        if ctx.trace_id:
            line["trace_id"] = ctx.trace_id
        queue_wait = ctx.queue_wait_s
        if queue_wait is not None:
            line["queue_ms"] = _ms(queue_wait)
        if ctx.usage is not None:
            line["prompt_tokens"] = ctx.usage.prompt_tokens
            line["completion_tokens"] = ctx.usage.completion_tokens
        if ctx.error_type:
            line["error_type"] = ctx.error_type
        if ctx.exception is not None:
            line["traceback"] = "".join(traceback.format_exception(ctx.exception))
        if ctx.cache is not None:
            line["cache"] = ctx.cache.status
        if ctx.finalizer_errors:
            line["finalizer_errors"] = ctx.finalizer_errors
        if self.content and ctx.content is not None:
            line["content"] = redact(ctx.content)
        self._write(line)

    def _now(self) -> str:
        t = time.time()
        second = int(t)
        if second != self._second:
            self._second, self._second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((t - second) * 1000):03d}Z"

    def _write(self, line: dict[str, Any]) -> None:
        self._buffer.append(orjson.dumps(line, default=str) + b"\n")

    def flush(self) -> None:
        if self._buffer:
            data = b"".join(self._buffer)
            self._buffer.clear()
            try:
                self._out.write(data)
                self._out.flush()
            except (OSError, ValueError):
                pass  # stdout closed (a piped reader went away): logs are best-effort

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            self.flush()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _upstream_ttft(ctx: RequestContext) -> float | None:
    if ctx.upstream_started is None:
        return None
    first = ctx.upstream_first_at or ctx.upstream_done
    return None if first is None else first - ctx.upstream_started


