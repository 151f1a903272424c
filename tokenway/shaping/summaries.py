"""Summaries of a conversation's older turns, written by a small model and made once per prefix.

A summary is keyed by the hash of what it summarises: the system prompt and the turns it covers, in
order. A conversation that grows keeps its prefix, so the next request finds the summary already
made and sends it with the newer turns; only when that no longer fits is a longer prefix summarised
(the earlier summary and the turns after it, not the whole history again). Concurrent requests for
the same prefix share one call. The cache is per process, bounded, least recently used dropped.

The summariser's call enters the gateway's own policy list as the caller (the same key, limits and
budget, its own line in the log and the ledger), like a job's requests.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial

import orjson

from tokenway.api.openai import end_request
from tokenway.context import RequestContext
from tokenway.errors import GatewayError, UpstreamError
from tokenway.observability.logging import JsonLog
from tokenway.observability.metrics import Metrics
from tokenway.policies.base import Handler
from tokenway.protocol import first_choice
from tokenway.providers.base import Call, Completion
from tokenway.shaping.counting import Message, message_text

INSTRUCTIONS = (
    "You summarise the earlier part of a conversation between a user and an assistant so that the "
    "assistant can continue it without the full text. Keep facts, names, numbers, decisions, open "
    "questions and what tools returned. Write plain prose, in the conversation's language, no preamble."
)
SUMMARY_PREFIX = "Summary of the earlier conversation: "


def prefix_hashes(summarizer: str, pinned: Sequence[Message], turns: Sequence[Sequence[Message]]) -> list[str]:
    """``hashes[j]``: the key of a summary of the first ``j + 1`` turns after the system prompt."""
    running = hashlib.sha256(orjson.dumps([summarizer, list(pinned)], option=orjson.OPT_SORT_KEYS))
    out = []
    for turn in turns:
        running.update(orjson.dumps(list(turn), option=orjson.OPT_SORT_KEYS))
        out.append(running.copy().hexdigest())
    return out


def transcript(messages: Sequence[Message]) -> str:
    """The turns as the summariser reads them: one ``role: text`` paragraph a message."""
    lines = []
    for message in messages:
        role = str(message.get("role"))
        if role == "tool":
            role = f"tool result ({message.get('tool_call_id', '')})"
        elif message.get("tool_calls"):
            role = "assistant (tool calls)"
        lines.append(f"{role}: {message_text(message)}")
    return "\n\n".join(lines)


def summary_message(summary: str) -> Message:
    return {"role": "system", "content": SUMMARY_PREFIX + summary}


class Summaries:
    """The bounded cache of summaries and the calls that fill it."""

    def __init__(self, entries: int, log: JsonLog, metrics: Metrics | None) -> None:
        self._entries = entries
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._pending: dict[str, asyncio.Task[str]] = {}
        self._log = log
        self._metrics = metrics
        self.handler: Handler | None = None  # the composed policy list; the app sets it once it is built

    def cached(self, key: str) -> str | None:
        summary = self._cache.get(key)
        if summary is not None:
            self._cache.move_to_end(key)
        return summary

    async def summary(
        self, ctx: RequestContext, key: str, summarizer: str, messages: Sequence[Message], max_tokens: int
    ) -> str:
        """The summary of ``messages`` under ``key``: from the cache, from a call in flight, or a new call.
        The call runs as a task of its own, so a caller that hangs up does not take it from the others."""
        found = self.cached(key)
        if found is not None:
            return found
        task = self._pending.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._write(ctx, summarizer, messages, max_tokens))
            self._pending[key] = task
            task.add_done_callback(partial(self._written, key))
        return await asyncio.shield(task)

    def _written(self, key: str, task: asyncio.Task[str]) -> None:
        del self._pending[key]
        if task.cancelled() or task.exception() is not None:  # the waiters have the error; nothing is kept
            return
        self._cache[key] = task.result()
        if len(self._cache) > self._entries:
            self._cache.popitem(last=False)

    async def _write(self, ctx: RequestContext, summarizer: str, messages: Sequence[Message], max_tokens: int) -> str:
        assert self.handler is not None, "the app binds the policy list before serving"
        asked = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": transcript(messages)}]
        call = Call("chat", {"model": summarizer, "temperature": 0, "max_tokens": max_tokens, "messages": asked})
        sub = RequestContext(request_id=f"{ctx.request_id}.summary", endpoint="chat", client_ip=ctx.client_ip,
                             api_key=ctx.api_key, priority=ctx.priority, deadline=ctx.deadline, job=ctx.job,
                             upstream_headers=dict(ctx.upstream_headers))
        if self._metrics is not None:
            self._metrics.request_started("chat")
        try:
            answer = await self.handler(sub, call)
            if not isinstance(answer, Completion):  # asked without stream: a policy must not make one
                await answer.aclose()
                raise UpstreamError(f"The summariser {summarizer!r} answered with a stream.")
            sub.usage = answer.usage
            _, _, message = first_choice(answer.body)
            text = message.get("content")
            if not isinstance(text, str) or not text.strip():
                raise UpstreamError(f"The summariser {summarizer!r} wrote no summary.")
            return text.strip()
        except GatewayError as error:
            sub.status, sub.error_type = error.status, type(error).__name__
            raise
        except asyncio.CancelledError:
            sub.status, sub.error_type = 499, "Cancelled"
            raise
        except Exception as exc:  # a bug: its traceback goes to the summary call's log line
            sub.status, sub.error_type, sub.exception = 500, type(exc).__name__, exc
            raise
        finally:
            await end_request(sub, self._metrics, self._log)
