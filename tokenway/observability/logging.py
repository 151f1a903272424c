"""The one log: JSON lines on stdout for requests, lifecycle events and stdlib ``logging`` records.

Lines are built with orjson and appended to a buffer that a background task flushes a few
times a second, so a request pays for a dict and a serialisation, not for a write syscall.
Message content and keys are never logged unless content logging is turned on, and then
redacted.

While the log runs (``start()`` to ``aclose()``, the app's lifespan) it also owns the root
logger: records from any module, ours (the local engines) or a library's (uvicorn's error
logger), become lines of the same shape, so stdout carries one format only.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import sys
import threading
import time
import traceback
from dataclasses import asdict
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
    """Buffered JSON-lines writer. ``start()``/``aclose()`` run the flusher and the stdlib capture
    inside the app's lifespan."""

    def __init__(
        self, out: IO[bytes] | None = None, *, sample: float = 1.0, requests: bool = True, content: bool = False,
        level: str = "info",
    ) -> None:
        self._out = out or sys.stdout.buffer
        self._min_level = _LEVELS.get(level, 20)
        self._buffer: list[bytes] = []
        # Records also come from other threads (the llama decode loop, llama.cpp's own log callback).
        self._lock = threading.Lock()
        self._records = _RecordsToJson(self, self._min_level)
        self._root_level: int | None = None  # the root logger's level before capture, restored after
        self._sample = sample
        self._requests = requests
        self.content = content
        self._flusher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._flusher = asyncio.get_running_loop().create_task(self._flush_periodically())
        self.capture_stdlib()

    async def aclose(self) -> None:
        self.release_stdlib()
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        self.flush()

    def capture_stdlib(self) -> None:
        """Write every stdlib ``logging`` record at or above this log's level here, until ``release_stdlib()``."""
        root = logging.getLogger()
        if self._records in root.handlers:
            return
        self._root_level = root.level
        # The root's level decides whether a record is made at all (Python's default lets only warnings
        # through): lowered to ours, never raised above what another handler may already be getting.
        root.setLevel(min(root.level, self._min_level))
        root.addHandler(self._records)

    def release_stdlib(self) -> None:
        """Hand the root logger back as it was (tests run many gateways in one process)."""
        root = logging.getLogger()
        if self._records not in root.handlers:
            return
        root.removeHandler(self._records)
        if self._root_level is not None:
            root.setLevel(self._root_level)

    def event(self, event: str, level: str = "info", **fields: Any) -> None:
        if _LEVELS.get(level, 20) < self._min_level:
            return
        self._write({"ts": _timestamp(time.time()), "level": level, "event": event, **fields})
        if self._flusher is None:
            self.flush()  # before start or after shutdown: write through

    def record(self, record: logging.LogRecord) -> None:
        """One stdlib ``logging`` record as a line: ``event`` "log", the logger's name, its message."""
        line: dict[str, Any] = {
            "ts": _timestamp(record.created), "level": record.levelname.lower(), "event": "log",
            "logger": record.name, "message": record.getMessage(),
        }
        if record.exc_info:
            line["traceback"] = "".join(traceback.format_exception(*record.exc_info))
        self._write(line)
        if self._flusher is None:
            self.flush()  # no flusher (a process without the app, e.g. the workers' supervisor): write through

    def request(self, ctx: RequestContext, end: float) -> None:
        failed = ctx.status >= 400
        if self._min_level > (40 if ctx.status >= 500 else 20):
            return
        if not self._requests or (not failed and self._sample < 1.0 and random.random() >= self._sample):
            return
        line: dict[str, Any] = {
            "ts": _timestamp(time.time()),
            "level": "error" if ctx.status >= 500 else "info",
            "event": "request",
            "request_id": ctx.request_id,
            "endpoint": ctx.endpoint,
            "model": ctx.model,
            "deployment": ctx.deployment,
            "key": ctx.key_alias,
            "client": ctx.client_ip,  # the client's address, not the proxy's (tokenway/api/client_address.py)
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
        if ctx.release is not None:
            line["release"], line["version"] = ctx.release.model, ctx.release.version
        if ctx.context_shaped is not None:  # the conversation did not fit the model's window
            line["context"] = asdict(ctx.context_shaped)
        if ctx.prompt is not None:
            line["prompt"], line["prompt_version"] = ctx.prompt
        if ctx.tier is not None:
            line["tier"] = ctx.tier.for_log()
        if ctx.finalizer_errors:
            line["finalizer_errors"] = ctx.finalizer_errors
        if self.content and ctx.content is not None:
            line["content"] = redact(ctx.content)
        self._write(line)

    def _write(self, line: dict[str, Any]) -> None:
        data = orjson.dumps(line, default=str) + b"\n"
        with self._lock:
            self._buffer.append(data)

    def flush(self) -> None:
        if self._buffer:
            with self._lock:
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


class _RecordsToJson(logging.Handler):
    """The root logger's handler while a ``JsonLog`` runs: each record becomes one of its lines."""

    def __init__(self, log: JsonLog, level: int) -> None:
        super().__init__(level)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._log.record(record)
        except Exception:
            self.handleError(record)  # a bad format string in someone's log call must not break theirs


def _timestamp(t: float) -> str:
    # UTC, to the millisecond.
    second = int(t)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(second))}.{int((t - second) * 1000):03d}Z"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _upstream_ttft(ctx: RequestContext) -> float | None:
    if ctx.upstream_started is None:
        return None
    first = ctx.upstream_first_at or ctx.upstream_done
    return None if first is None else first - ctx.upstream_started


