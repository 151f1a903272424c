"""Retries, fallback chains and degradation, around routing.

One call may take several attempts: on a retryable failure before the first byte (connect
error, timeout, 429, 5xx, overload — configurable per model), the call is tried again after
a full-jitter exponential backoff, on another deployment where there is one (routing skips
those already tried). Every retry must fit the request's deadline and the model's retry
budget, so that a failing backend costs at most ``budget_ratio`` extra load, not a multiple of it.
A ``Retry-After`` sent by a deployment keeps routing away from it for that long; it is waited
out only when no other deployment of the model can take the call, and only if it is short.

When the model is exhausted, its ``fallbacks`` are tried in order (``context_fallbacks`` when
the prompt was too long). When nothing can answer, a configured canned reply is served —
marked by the ``x-tokenway-degraded`` header and ``system_fingerprint: tokenway-degraded`` —
else the last error goes to the client, with a Retry-After.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator

import orjson

from tokenway.clock import SYSTEM_CLOCK, Clock
from tokenway.config import GatewayConfig, ModelConfig
from tokenway.context import RequestContext
from tokenway.deployments import ModelTable
from tokenway.errors import (
    GatewayError,
    Overloaded,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tokenway.policies.admission import Shed
from tokenway.policies.base import Handler
from tokenway.protocol import SSE_DONE, sse_event
from tokenway.providers.base import Answer, Call, Completion, Stream
from tokenway.routing.options import RetryConfig, RetryOn
from tokenway.routing.stats import RoutingStats

DEGRADED_FINGERPRINT = "tokenway-degraded"


class RetryBudget:
    """A token bucket: each call deposits ``ratio`` tokens, each retry spends one.

    ``min_per_s`` tokens also drip in per second, so a model with little traffic may still
    retry. Capped at ten seconds' worth, so a long calm does not bank a retry storm.
    """

    __slots__ = ("_at", "_cap", "_clock", "_config", "tokens")

    def __init__(self, config: RetryConfig, clock: Clock = SYSTEM_CLOCK) -> None:
        self._config = config
        self._clock = clock
        self._cap = max(10.0, 10.0 * config.budget_min_per_s)
        self.tokens = self._cap
        self._at = clock.now()

    def deposit(self) -> None:
        now = self._clock.now()
        config = self._config
        self.tokens = min(self._cap, self.tokens + config.budget_ratio + (now - self._at) * config.budget_min_per_s)
        self._at = now

    def withdraw(self) -> bool:
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def retry_kind(error: GatewayError) -> RetryOn | None:
    """Which ``retry.on`` setting covers ``error``; None when it is never retried."""
    if isinstance(error, UpstreamUnavailable):
        return "connect"
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamError) and error.retryable:
        return "429" if error.upstream_status == 429 else "5xx"
    if isinstance(error, Overloaded) and error.retryable:
        return "overloaded"
    return None


def is_context_overflow(error: GatewayError) -> bool:
    if error.code == "context_length_exceeded":
        return True
    if isinstance(error, UpstreamRejected) and error.status == 400 and error.body:
        body = error.body.lower()
        return b"context_length_exceeded" in body or b"maximum context length" in body
    return False


class Resilience:
    def __init__(
        self, models: ModelTable, config: GatewayConfig, stats: RoutingStats, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._table = models
        self._configs: dict[str, ModelConfig] = {m.name: m for m in config.models}
        self._budgets = {m.name: RetryBudget(m.retry, clock) for m in config.models}
        self._stats = stats
        self._clock = clock  # must be routing's: Retry-After cooldowns are times on it

    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        requested = call.body["model"]
        self._table.lookup(requested)  # an unknown model is a 404 before anything else
        chain: list[str] = [requested]
        last: GatewayError | None = None
        for name in chain:
            if name != requested:
                remaining = ctx.remaining()
                if remaining is not None and remaining <= 0:
                    break
            try:
                return await self._attempts(ctx, call, next, name)
            except GatewayError as error:
                last = error
                model = self._configs[name]
                if is_context_overflow(error) and model.context_fallbacks:
                    targets, reason = model.context_fallbacks, "fallback.context"
                elif error.retryable or isinstance(error, Shed):
                    targets, reason = model.fallbacks, "fallback.model"
                else:
                    raise
                added = [t for t in targets if t not in chain and _allowed(ctx, t)]
                if added:
                    self._stats.count(reason, len(added))
                chain.extend(added)
        assert last is not None
        return self._degrade(ctx, call, requested, last)

    async def _attempts(self, ctx: RequestContext, call: Call, next: Handler, name: str) -> Answer:
        retry = self._configs[name].retry
        budget = self._budgets[name]
        budget.deposit()
        ctx.model = name
        ctx.tried.clear()  # a fallback model starts with all its deployments
        last: GatewayError | None = None
        for attempt in range(retry.attempts):
            if last is not None:
                await self._before_retry(ctx, name, retry, budget, attempt, last)
            try:
                return await next(ctx, call)
            except GatewayError as error:
                kind = retry_kind(error)
                if kind is None or kind not in retry.on:
                    raise
                last = error
        assert last is not None
        self._stats.count("retry.attempts_exhausted")
        raise last

    async def _before_retry(
        self, ctx: RequestContext, name: str, retry: RetryConfig, budget: RetryBudget, attempt: int,
        last: GatewayError,
    ) -> None:
        """Sleep before attempt ``attempt``, or raise ``last`` if the retry cannot happen."""
        delay = random.uniform(0, min(retry.backoff_max, retry.backoff_base * 2 ** (attempt - 1)))
        now = self._clock.now()
        deployments = self._table.lookup(name)  # discovered workers may have come or gone since the last try
        if deployments and all(d.cooldown_until > now for d in deployments):
            # every deployment asked us to stay away: wait for the first to be free again
            wait = min(d.cooldown_until for d in deployments) - now
            if wait > retry.max_retry_after:
                self._stats.count("retry.retry_after_too_long")
                raise last
            self._stats.count("retry.retry_after_waited")
            delay = max(delay, wait)
        remaining = ctx.remaining()
        if remaining is not None and delay >= remaining:
            self._stats.count("retry.deadline")
            raise last
        if not budget.withdraw():
            self._stats.count("retry.budget_exhausted")
            raise last
        self._stats.count("retry.attempt")
        if delay > 0:
            await self._clock.sleep(delay)

    def _degrade(self, ctx: RequestContext, call: Call, requested: str, last: GatewayError) -> Answer:
        degradation = self._configs[requested].degradation
        if degradation.reply is None or call.kind == "embeddings":  # a canned text is no embedding
            self._stats.count("degraded.error")
            if last.retry_after is None and (last.retryable or isinstance(last, Shed)):
                last.retry_after = degradation.retry_after
            raise last
        self._stats.count("degraded.reply")
        ctx.response_headers.append((b"x-tokenway-degraded", b"true"))
        return canned_answer(call, requested, degradation.reply)


def _allowed(ctx: RequestContext, model: str) -> bool:
    """A key's allow-list holds through every fallback: a model it may not use is skipped."""
    return ctx.key is None or ctx.key.allows(model)


def canned_answer(call: Call, model: str, text: str) -> Answer:
    """The configured reply in OpenAI's shape, marked with the degraded fingerprint."""
    created = int(time.time())
    chat = call.kind == "chat"
    if not call.stream:
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"} if chat
                  else {"index": 0, "text": text, "finish_reason": "stop"})
        body = {"id": "degraded", "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": model, "system_fingerprint": DEGRADED_FINGERPRINT, "choices": [choice]}
        return Completion(body=orjson.dumps(body))
    delta = ({"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": "stop"} if chat
             else {"index": 0, "text": text, "finish_reason": "stop"})
    chunk = {"id": "degraded", "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
             "model": model, "system_fingerprint": DEGRADED_FINGERPRINT, "choices": [delta]}

    async def source(_: Stream) -> AsyncIterator[bytes]:
        yield sse_event(chunk) + SSE_DONE

    return Stream(source)
