"""Structured output: replies checked against the JSON, schema or tools the request asked for, and retried.

Only chat requests with ``response_format`` ``json_object``/``json_schema`` or with ``tools`` are
touched; every other request passes with two dict lookups, and its stream is not wrapped.

- **Answers** (and **buffered streams**): each reply is checked (``tokenway.validation.replies``);
  an invalid one is sent back to the model with what was wrong (the bad reply, then a user message
  naming the JSON error's position or the schema path, or a tool result per bad tool call), up to
  ``retries`` more times, while the request's deadline and the key's budget allow. The client gets
  the first valid answer, its usage the sum of every call; or ``StructuredOutputInvalid`` (502,
  ``invalid_structured_output``) with the last problem. A buffered stream is asked of the upstream
  as one answer and replayed as a stream once valid (a key's ``structured_output: buffer``, or the
  model's ``streams: buffer``).
- **Streams** otherwise pass through as they come and are checked when their ``[DONE]`` arrives:
  an invalid one gets an error event before ``[DONE]`` (the SDK raises on it). Nothing can be retried
  once the client has the text.

Every call is billed: the usage of failed attempts is added to the answer's (or, on failure, put on
the context), so the ledger and the budget settle see all of them. Each retry first holds its own
worst case on the key's budget (``AccessPolicy.hold_more``); a retry the budget cannot hold is not
made. The policy sits after the cache, which therefore stores only answers that passed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from tokenway.cache.entry import Entry, Uncacheable, as_sse, assemble, replay
from tokenway.config import GatewayConfig
from tokenway.context import RequestContext
from tokenway.errors import GatewayError
from tokenway.observability.metrics import Metrics
from tokenway.policies.base import Handler
from tokenway.protocol import SSE_DONE, Usage, ends_stream, sse_error
from tokenway.providers.base import Answer, Call, Completion, Stream
from tokenway.validation.replies import JSON_FORMATS, Contract, Problem, retry_messages
from tokenway.validation.schemas import SchemaCache

Hold = Callable[[RequestContext, Call], Awaitable[bool]]  # AccessPolicy.hold_more: may one more call be paid for?

_DEGRADED = (b"x-tokenway-degraded", b"true")


class StructuredOutputInvalid(GatewayError):
    """Every attempt broke the requested format. 502: the upstream's answer was unusable, not the request.
    ``x-should-retry: false`` stops the SDK's own retries, which would repeat every attempt again."""

    status = 502
    type = "api_error"
    code = "invalid_structured_output"

    def __init__(self, message: str, *, param: str, problem: Problem, attempts: int) -> None:
        super().__init__(message, param=param, headers={"x-should-retry": "false"})
        self.problem = problem
        self.attempts = attempts

    def envelope(self) -> bytes:
        problem = self.problem
        return orjson.dumps({"error": {
            "message": self.message, "type": self.type, "param": self.param, "code": self.code,
            "validation": {"kind": problem.kind, "where": problem.where, "detail": problem.detail,
                           "attempts": self.attempts},
        }})


@dataclass(slots=True, frozen=True)
class _Rules:
    retries: int
    buffer: bool  # streams are answered in full upstream, checked and retried, then replayed


class StructuredOutput:
    def __init__(self, config: GatewayConfig, metrics: Metrics, hold: Hold | None = None) -> None:
        default = config.structured_output
        self._rules: dict[str, _Rules] = {}
        for model in config.models:
            own = model.structured_output
            if default.enabled if own.enabled is None else own.enabled:
                self._rules[model.name] = _Rules(
                    retries=default.retries if own.retries is None else own.retries,
                    buffer=(own.streams or default.streams) == "buffer",
                )
        self._schemas = SchemaCache()
        self._failures = metrics.structured_output_failures
        self._retries = metrics.structured_output_retries
        self._hold = hold

    @staticmethod
    def wanted(config: GatewayConfig) -> bool:
        """Whether any model has structured output on (else the policy stays out of the list)."""
        default = config.structured_output.enabled
        return any(default if m.structured_output.enabled is None else m.structured_output.enabled
                   for m in config.models)

    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        body = call.body
        response_format = body.get("response_format")
        if not body.get("tools") and (response_format is None or response_format.get("type") not in JSON_FORMATS):
            return await next(ctx, call)
        rules = self._rules.get(body.get("model"))  # type: ignore[arg-type]
        contract = None if rules is None or call.kind != "chat" else Contract.of(body, self._schemas)
        if rules is None or contract is None:
            return await next(ctx, call)
        if call.stream and not rules.buffer and not (ctx.key is not None and ctx.key.structured_output == "buffer"):
            answer = await next(ctx, call)
            if isinstance(answer, Stream):
                return self._checked_at_end(ctx, answer, contract, body["model"])
            return answer
        return await self._until_valid(ctx, call, next, contract, rules.retries, body["model"])

    async def _until_valid(
        self, ctx: RequestContext, call: Call, next: Handler, contract: Contract, retries: int, model: str
    ) -> Answer:
        base = call.body
        if call.stream:  # buffered: one answer from the upstream, replayed as a stream once valid
            base = {k: v for k, v in base.items() if k != "stream_options"}
            base["stream"] = False
        attempt = Call(call.kind, base, call.prompt_estimate) if call.stream else call
        usage: Usage | None = None
        for tries in range(1, retries + 2):
            answer = await next(ctx, attempt)
            usage = _add(usage, answer.usage)
            if not isinstance(answer, Completion):  # asked whole, so never a stream; passed on if it is
                return answer
            answer.usage = usage  # every call so far: billed, also when the answer is passed on as it is
            reply = _object(answer.body)
            if reply is None:  # not a chat completion object: nothing this policy can read
                return answer
            # A canned reply (resilience's degradation, when nothing could answer) is not checked or retried.
            problem = None if _DEGRADED in ctx.response_headers else contract.check(reply)
            if problem is None:
                return self._answer(ctx, call, answer, reply, usage, tries)
            self._failures.labels(model, problem.kind).inc()
            attempt = Call(call.kind, {**base, "messages": [*base["messages"], *retry_messages(problem, contract)]})
            stop = "" if tries <= retries else "no retries left"
            stop = stop or await self._may_retry(ctx, attempt)
            if stop:
                ctx.usage = usage  # the failed calls are billed all the same
                raise StructuredOutputInvalid(
                    f"The model's reply did not match the requested {_asked(contract)} after {tries} "
                    f"attempt{'s' if tries > 1 else ''} ({stop}). Last problem: {problem.describe()}",
                    param=contract.param, problem=problem, attempts=tries,
                )
            self._retries.labels(model).inc()
        raise AssertionError("the last attempt returns or raises")

    async def _may_retry(self, ctx: RequestContext, attempt: Call) -> str:
        """Why another attempt cannot be made now, or "" when it can (its budget hold is then taken)."""
        remaining = ctx.remaining()
        if remaining is not None and remaining <= 0:
            return "no retry: the request's deadline has passed"
        if self._hold is not None and not await self._hold(ctx, attempt):
            return "no retry: the key's budget cannot hold another attempt"
        return ""

    @staticmethod
    def _answer(
        ctx: RequestContext, call: Call, answer: Completion, reply: dict[str, Any], usage: Usage | None, tries: int
    ) -> Answer:
        if tries > 1:
            ctx.response_headers.append((b"x-tokenway-structured-attempts", str(tries).encode()))
        if not call.stream:
            if tries == 1:
                return answer  # as the upstream sent it
            if usage is not None:
                reply["usage"] = usage.as_dict()
            return Completion(orjson.dumps(reply), usage, answer.headers)
        if usage is not None:
            reply["usage"] = usage.as_dict()
        block = as_sse(Entry(call.kind, orjson.dumps(reply), usage), call.include_usage)
        stream = Stream(lambda _: replay(block))
        stream.usage = usage
        return stream

    def _checked_at_end(self, ctx: RequestContext, inner: Stream, contract: Contract, model: str) -> Stream:
        def invalid(problem: Problem) -> bytes:
            self._failures.labels(model, problem.kind).inc()
            error = StructuredOutputInvalid(
                f"The streamed reply did not match the requested {_asked(contract)}: {problem.describe()}",
                param=contract.param, problem=problem, attempts=1,
            )
            ctx.status, ctx.error_type, ctx.failed_mid_stream = error.status, type(error).__name__, True
            return sse_error(error)

        return Stream(lambda outer: _CheckedAtEnd(inner, outer, contract, invalid))


class _CheckedAtEnd:
    """Relays a stream's blocks as they come and checks the whole reply when ``[DONE]`` arrives; an
    invalid one gets an error event put before the ``[DONE]``."""

    __slots__ = ("_blocks", "_contract", "_inner", "_invalid", "_outer")

    def __init__(
        self, inner: Stream, outer: Stream, contract: Contract, invalid: Callable[[Problem], bytes]
    ) -> None:
        self._inner, self._outer, self._contract, self._invalid = inner, outer, contract, invalid
        self._blocks: list[bytes] = []

    def __aiter__(self) -> _CheckedAtEnd:
        return self

    @property
    def has_block(self) -> bool:  # routing's prefetched first block: the writer need not wait for it
        return self._inner.ready()

    async def __anext__(self) -> bytes:
        try:
            block = await self._inner.__anext__()
        finally:
            self._outer.usage = self._inner.usage
        self._blocks.append(block)
        if ends_stream(block):
            problem = self._check()
            if problem is not None:
                block = block[: -len(SSE_DONE)] + self._invalid(problem) + SSE_DONE
        return block

    def _check(self) -> Problem | None:
        try:
            body = assemble("chat", self._blocks, None)
        except Uncacheable:  # the stream carried an error or did not finish: it has failed already
            return None
        self._blocks = []
        return self._contract.check(orjson.loads(body))

    async def aclose(self) -> None:
        await self._inner.aclose()


def _object(body: bytes) -> dict[str, Any] | None:
    """A non-streaming answer's body as a JSON object, or None."""
    try:
        reply = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return reply if isinstance(reply, dict) else None


def _add(total: Usage | None, more: Usage | None) -> Usage | None:
    if more is None:
        return total
    if total is None:
        return Usage(more.prompt_tokens, more.completion_tokens, more.cached_tokens)
    return Usage(total.prompt_tokens + more.prompt_tokens, total.completion_tokens + more.completion_tokens,
                 total.cached_tokens + more.cached_tokens)


def _asked(contract: Contract) -> str:
    if contract.format == "json_schema":
        return f"JSON schema '{contract.schema_name}'" if contract.schema_name else "JSON schema"
    if contract.format == "json_object":
        return "JSON object" + (" or tool calls" if contract.tools else "")
    return "tool declarations"

