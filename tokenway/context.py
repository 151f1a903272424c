"""Per-request state that travels down the policy list and into the request log."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tokenway.protocol import Usage


@dataclass(slots=True)
class RequestContext:
    request_id: str
    endpoint: str
    started: float = field(default_factory=time.perf_counter)
    deadline: float | None = None  # perf_counter() time after which the request has failed
    client_ip: str | None = None
    api_key: str | None = None  # the presented key, never logged
    key_alias: str | None = None  # who the key belongs to, safe to log
    cache_control: str | None = None  # the request's Cache-Control header (no-cache, no-store)
    model: str | None = None  # public model name
    deployment: str | None = None  # name of the deployment serving the call, for logs
    target: Any = None  # the ``Deployment`` chosen by routing for the current attempt
    stream: bool = False
    responded: bool = False  # the last byte of the response was handed to the server
    status: int = 200
    error_type: str | None = None
    usage: Usage | None = None
    upstream_started: float | None = None  # the (last) call to the backend began
    upstream_done: float | None = None  # a non-streaming answer was complete
    upstream_first_at: float | None = None  # a stream's first block arrived from the backend
    first_token_at: float | None = None  # ... and was sent on to the client
    chunk_gaps: list[float] = field(default_factory=list)  # between streamed blocks, for ITL
    attempts: int = 0
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    head_lines: bytes = b""  # response headers the policies rendered as lines themselves (x-ratelimit-*)
    upstream_headers: dict[str, str] = field(default_factory=dict)  # e.g. traceparent, sent to the backend
    extra: dict[str, Any] = field(default_factory=dict)
    # Run once the response is complete, whatever happened (settling budgets, usage, metrics).
    finalizers: list[Callable[[RequestContext], Awaitable[None] | None]] = field(default_factory=list)

    def defer(self, finalizer: Callable[[RequestContext], Awaitable[None] | None]) -> None:
        """Run ``finalizer(ctx)`` after the response has been sent (also on errors and hang-ups)."""
        self.finalizers.append(finalizer)

    def remaining(self) -> float | None:
        """Seconds left before the deadline, or None when the request has none."""
        if self.deadline is None:
            return None
        return self.deadline - time.perf_counter()

    def overhead(self, now: float) -> float | None:
        """Seconds spent in the gateway itself: before the backend call, and relaying its answer."""
        if self.upstream_started is None:
            return now - self.started
        before = self.upstream_started - self.started
        if self.upstream_done is not None:
            return before + (now - self.upstream_done)
        if self.upstream_first_at is not None:
            return before + ((self.first_token_at or now) - self.upstream_first_at)
        return None

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0
