"""Context shaping: a conversation longer than the model's window is rejected, trimmed or summarised here,
not by the backend.

Only chat calls to models with a ``context:`` section are looked at (``tokenway.shaping.options``);
the policy is absent when no model has one. The prompt is counted with the model's tokenizer where the
gateway has it (``tokenway.shaping.counting``) and must fit the window less the room for the answer
(``max_tokens`` / ``max_completion_tokens``, else ``output_reserve``). When it does not:

- ``reject``: 400 ``context_length_exceeded`` on ``messages``, as OpenAI answers; the model's
  ``context_fallbacks`` are then tried by ``Resilience``, which sits just above this policy;
- ``trim``: the oldest turns go, whole (``tokenway.shaping.fitting``);
- ``summarize``: the oldest turns are replaced by a summary a small model wrote
  (``tokenway.shaping.summaries``); if it cannot, the turns are trimmed instead.

What was done goes into the request's log line (``context``), the ``x-tokenway-context`` response
header and the ``tokenway_context_shaped`` metric. The policy sits below ``Resilience``, so the window
is the one of the model being tried (a fallback's own after a fallback).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tokenway.config import GatewayConfig, ModelConfig
from tokenway.context import ContextShaped, RequestContext
from tokenway.deployments import Deployment, ModelTable
from tokenway.errors import GatewayError, InvalidRequest
from tokenway.observability.logging import JsonLog
from tokenway.observability.metrics import Metrics
from tokenway.policies.base import Handler
from tokenway.providers.base import Answer, Call
from tokenway.shaping.counting import (
    ESTIMATE,
    Counter,
    Message,
    RememberedCounts,
    TemplateCounter,
    hf_counter,
    tiktoken_counter,
)
from tokenway.shaping.fitting import Layout, layout, turns_to_drop
from tokenway.shaping.options import ContextConfig
from tokenway.shaping.summaries import Summaries, prefix_hashes, summary_message

HEADER = b"x-tokenway-context"
RELEARN_S = 30.0  # an unknown window is asked for again at most this often


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


def counter_for(model: ModelConfig, deployments: Sequence[Deployment]) -> Counter:
    """The best tokenizer the gateway has for ``model``'s prompts (its first deployment's)."""
    assert model.context is not None
    if model.context.tokenizer is not None:
        return hf_counter(model.context.tokenizer)
    first = deployments[0] if deployments else None
    if first is not None:
        render = getattr(first.provider, "prompt_tokens", None)
        text = getattr(first.provider, "text_tokens", None)
        if render is not None and text is not None:  # the embedded model: its own template and tokenizer
            return TemplateCounter(render, RememberedCounts(text))
    upstream = model.deployments[0]
    if upstream.provider == "openai":
        found = tiktoken_counter(upstream.model or model.name)
        if found is not None:
            return found
    return ESTIMATE


@dataclass(slots=True)
class _Shaped:
    name: str
    config: ContextConfig
    counter: Counter
    window: int | None  # configured, or learned from the deployments; None: not known, nothing is shaped
    summaries: Summaries | None
    ask_again_at: float = 0.0  # event-loop time after which an unknown window is asked for again


@dataclass(slots=True)
class _Fit:
    messages: list[Message]
    tokens: int
    dropped: int
    summary: str | None = None


class ContextWindow:
    def __init__(self, config: GatewayConfig, models: ModelTable, log: JsonLog, metrics: Metrics) -> None:
        self._models: dict[str, _Shaped] = {}
        for model in config.models:
            context = model.context
            if context is None:
                continue
            summaries = (Summaries(context.summary_cache_entries, log, metrics)
                         if context.strategy == "summarize" else None)
            self._models[model.name] = _Shaped(model.name, context, counter_for(model, models.lookup(model.name)),
                                               context.window, summaries)
        self._table = models
        self._learning: set[asyncio.Task[None]] = set()
        self._log = log
        self._shaped = metrics.context_shaped
        self._removed = metrics.context_tokens_removed

    @staticmethod
    def wanted(config: GatewayConfig) -> bool:
        """Whether any model has a ``context:`` section (else the policy stays out of the list)."""
        return any(model.context is not None for model in config.models)

    def bind(self, handler: Handler) -> None:
        """The composed policy list, which summaries' calls enter (it exists only after this policy)."""
        for shaped in self._models.values():
            if shaped.summaries is not None:
                shaped.summaries.handler = handler

    async def learn(self) -> None:
        """The window of each shaped model that configures none: the smallest its deployments report
        (a vLLM worker's ``max_model_len``, the embedded model's context size)."""
        await asyncio.gather(*(self._learn(shaped) for shaped in self._models.values() if shaped.window is None))

    async def _learn(self, shaped: _Shaped) -> None:
        asks = [asyncio.wait_for(d.provider.context_window(), d.config.timeouts.connect)
                for d in self._table.lookup(shaped.name) if hasattr(d.provider, "context_window")]
        found = await asyncio.gather(*asks, return_exceptions=True)
        windows = [w for w in found if isinstance(w, int)]
        shaped.window = min(windows) if windows else None
        fields: dict[str, Any] = {"model": shaped.name, "window": shaped.window, "counted_by": shaped.counter.name}
        failed = [repr(e) for e in found if isinstance(e, BaseException)]
        if failed:
            fields["errors"] = failed
        if not windows:
            fields["note"] = (f"no window configured or reported by a deployment: not shaped; asked again on a "
                              f"request, at most every {RELEARN_S:.0f}s")
        self._log.event("context_window", level="info" if windows else "warning", **fields)

    def _learn_later(self, shaped: _Shaped) -> None:
        """Ask again, off the request path, for a window no deployment reported at start: workers found by
        discovery join later, a worker may have been loading."""
        now = asyncio.get_running_loop().time()
        if now < shaped.ask_again_at:
            return
        shaped.ask_again_at = now + RELEARN_S
        task = asyncio.get_running_loop().create_task(self._learn(shaped))
        self._learning.add(task)
        task.add_done_callback(self._learning.discard)

    async def aclose(self) -> None:
        for task in list(self._learning):
            task.cancel()
        await asyncio.gather(*self._learning, return_exceptions=True)

    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        shaped = self._models.get(ctx.model or call.body["model"])
        if shaped is None or call.kind != "chat":
            return await next(ctx, call)
        if shaped.window is None:
            self._learn_later(shaped)
            return await next(ctx, call)
        messages: list[Message] = call.body["messages"]
        reserve = call.max_tokens or shaped.config.output_reserve
        counter = shaped.counter
        tools = call.body.get("tools")
        # Declared tools are part of the prompt too (the template writes their schemas); they always stay.
        tools_tokens = counter.text_tokens(orjson.dumps(tools).decode()) if tools else 0
        budget = shaped.window - reserve - tools_tokens
        strategy = shaped.config.strategy
        if strategy != "reject" and counter is ESTIMATE:  # a reject is left to the backend when unsure
            budget = int(budget * (1 - shaped.config.estimate_margin))
        bound = counter.upper_bound(messages)
        if bound is not None and bound <= budget:
            return await next(ctx, call)
        before = counter.prompt_tokens(messages)
        if before <= budget:
            return await next(ctx, call)
        fit = None
        if strategy == "summarize":
            fit = await self._summarized(ctx, shaped, messages, budget)
        if strategy == "trim" or (strategy == "summarize" and fit is None):
            fit = _trimmed(counter, messages, budget)
            if fit is not None and strategy == "summarize":
                fit.summary = "failed"
        if fit is None:
            self._record(ctx, shaped, ContextShaped("reject", before, before, 0, counter.name))
            raise ContextLengthExceeded(_too_long(shaped, before, reserve, tools_tokens, strategy), param="messages")
        self._record(ctx, shaped, ContextShaped(strategy, before, fit.tokens, fit.dropped, counter.name, fit.summary))
        return await next(ctx, Call(call.kind, {**call.body, "messages": fit.messages}))

    async def _summarized(
        self, ctx: RequestContext, shaped: _Shaped, messages: list[Message], budget: int
    ) -> _Fit | None:
        """The conversation with its oldest turns summarised, or None when summarising cannot make it fit
        or the summariser failed (logged; the caller trims instead)."""
        summaries, config, counter = shaped.summaries, shaped.config, shaped.counter
        assert summaries is not None and config.summarizer is not None
        shape = layout(messages)
        if not shape.turns:
            return None
        pinned = messages[: shape.pinned]
        keys = prefix_hashes(config.summarizer, pinned, [messages[s:e] for s, e in shape.turns])
        cached_turns = 0  # the longest prefix of turns with a summary at hand
        for covered in range(len(keys), 0, -1):
            summary = summaries.cached(keys[covered - 1])
            if summary is None:
                continue
            candidate = _with_summary(messages, shape, covered, summary)
            tokens = counter.prompt_tokens(candidate)
            if tokens <= budget:
                return _Fit(candidate, tokens, covered, "cached")
            cached_turns = covered
            break
        costs = [counter.message_tokens(m) for m in messages]
        summary_room = counter.message_tokens(summary_message("")) + config.summary_max_tokens
        needed = turns_to_drop(costs, shape, budget, extra=summary_room)
        if needed is None:
            return None
        covered = max(needed, cached_turns + 1)
        if covered > len(shape.turns):
            return None
        end = shape.turns[covered - 1][1]
        if cached_turns:  # the summary made before, and the turns since: not the whole history again
            start = shape.turns[cached_turns - 1][1]
            previous = summaries.cached(keys[cached_turns - 1]) or ""
            source = [summary_message(previous), *messages[start:end]]
        else:
            source = shape.dropped_messages(messages, covered)
        try:
            summary = await summaries.summary(ctx, keys[covered - 1], config.summarizer, source,
                                              config.summary_max_tokens)
        except GatewayError as error:
            self._log.event("context_summary_failed", level="warning", request_id=ctx.request_id, model=shaped.name,
                            summarizer=config.summarizer, error=error.message)
            return None
        candidate = _with_summary(messages, shape, covered, summary)
        tokens = counter.prompt_tokens(candidate)
        return _Fit(candidate, tokens, covered, "made") if tokens <= budget else None

    def _record(self, ctx: RequestContext, shaped: _Shaped, done: ContextShaped) -> None:
        ctx.context_shaped = done
        self._shaped.labels(shaped.name, done.strategy).inc()
        # Each attempt (a retry, a context fallback) shapes again: the header tells of the last one only.
        ctx.response_headers[:] = [h for h in ctx.response_headers if h[0] != HEADER]
        if done.strategy == "reject":  # the error answer carries no header; the log line has it
            return
        self._removed.labels(shaped.name, done.strategy).inc(done.tokens_before - done.tokens_after)
        value = (f"{done.strategy}; tokens={done.tokens_before}->{done.tokens_after}; "
                 f"turns_dropped={done.turns_dropped}; counted={done.counted_by}"
                 + (f"; summary={done.summary}" if done.summary else ""))
        ctx.response_headers.append((HEADER, value.encode()))


def _trimmed(counter: Counter, messages: list[Message], budget: int) -> _Fit | None:
    """The conversation without its oldest turns, or None when the system prompt and the last turn
    alone are too long. Turns are picked with per-message counts, then the whole is counted as the
    model sees it (exact for the embedded model's template) and more turns go if needed."""
    shape = layout(messages)
    dropped = turns_to_drop([counter.message_tokens(m) for m in messages], shape, budget)
    while dropped is not None and dropped <= len(shape.turns):
        kept = shape.kept(messages, dropped)
        tokens = counter.prompt_tokens(kept)
        if tokens <= budget:
            return _Fit(kept, tokens, dropped)
        dropped += 1
    return None


def _with_summary(messages: list[Message], shape: Layout, covered: int, summary: str) -> list[Message]:
    start = shape.turns[covered][0] if covered < len(shape.turns) else shape.last
    return [*messages[: shape.pinned], summary_message(summary), *messages[start:]]


def _too_long(shaped: _Shaped, tokens: int, reserve: int, tools_tokens: int, strategy: str) -> str:
    counted = "" if shaped.counter.exact else f" (counted by {shaped.counter.name}, an estimate)"
    if tools_tokens:
        counted += f" plus {tools_tokens} for the declared tools"
    why = "" if strategy == "reject" else (
        f" Even with the older turns {'summarised' if strategy == 'summarize' else 'dropped'}, the system prompt "
        "and the last user turn do not fit."
    )
    return (f"This model's maximum context length is {shaped.window} tokens. However, your messages resulted in "
            f"{tokens} tokens{counted}, with {reserve} kept for the completion.{why} Please reduce the length of "
            "the messages, or lower max_tokens.")
