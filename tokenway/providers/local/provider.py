"""``provider: local``: the embedded model, answering OpenAI chat and text completions.

This module is the OpenAI side, shared by every engine: prompts, parameters, ``n`` choices,
stop strings across token boundaries, finish reasons, exact usage, and the response and SSE
chunk shapes. The engine (llama.cpp or transformers, by ``options.engine``) only turns prompt
tokens into token pieces.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, ClassVar

import orjson

from tokenway.config import DeploymentConfig
from tokenway.context import RequestContext
from tokenway.errors import InvalidRequest
from tokenway.protocol import (
    SSE_DONE,
    Usage,
    chat_choice,
    chat_chunk,
    chat_completion,
    new_id,
    sse_event,
    text_choice,
    text_chunk,
    text_completion,
)
from tokenway.providers.base import Answer, Call, Completion, ProviderResources, Stream
from tokenway.providers.local.engine import Engine, GenerationRequest
from tokenway.providers.local.options import LocalOptions
from tokenway.providers.local.sampling import IGNORED_HEADER, Plan, completion_budget, plan
from tokenway.providers.local.stop_strings import StopMatcher

# engine name -> "module:Class", imported on first use so the llama path never imports torch.
ENGINES: dict[str, tuple[str, str]] = {
    "llama": ("tokenway.providers.local.llama_engine:LlamaEngine", "pip install llama-cpp-python"),
    "transformers": (
        "tokenway.providers.local.transformers_engine:TransformersEngine",
        "pip install 'tokenway[transformers]'",
    ),
}

# One choice's output as it is produced: (choice index, text delta, finish reason or None).
Event = tuple[int, str, str | None]


def load_engine(options: LocalOptions) -> Engine:
    target, install = ENGINES[options.engine]
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeError(
            f"The local provider's {options.engine!r} engine needs a package that is not installed "
            f"({exc.name}): `{install}`."
        ) from exc
    engine: Engine = getattr(module, attr)(options)
    return engine


class LocalProvider:
    """The embedded model behind an OpenAI-compatible surface."""

    Options: ClassVar[type[LocalOptions]] = LocalOptions

    def __init__(
        self, deployment: DeploymentConfig, options: LocalOptions, resources: ProviderResources
    ) -> None:
        self.deployment = deployment
        if options.requantize_dir is None and resources is not None:  # the app's data dir, not the env's
            options = options.model_copy(update={"requantize_dir": str(resources.data_dir / "models")})
        self.options = options
        self.engine = load_engine(options)
        self._features: frozenset[str] = getattr(self.engine, "sampling_features", frozenset())

    async def start(self) -> None:
        await self.engine.start()

    async def aclose(self) -> None:
        await self.engine.aclose()

    async def models(self) -> list[str]:
        return [self.deployment.model or "local"]

    async def context_window(self) -> int | None:
        return self.engine.context_window

    def prompt_tokens(self, messages: Sequence[dict[str, Any]]) -> int:
        """The tokens ``chat`` would give the engine for ``messages``: rendered with the model's chat template."""
        return len(self.engine.chat_prompt([_text_message(m, i) for i, m in enumerate(messages)]))

    def text_tokens(self, text: str) -> int:
        return len(self.engine.text_prompt(text))

    async def chat(self, call: Call, ctx: RequestContext) -> Answer:
        messages = [_text_message(m, i) for i, m in enumerate(call.body.get("messages") or [])]
        prompts = [self.engine.chat_prompt(messages)]
        return await self._answer(call, ctx, prompts, "messages")

    async def completions(self, call: Call, ctx: RequestContext) -> Answer:
        given = _text_prompts(call.body.get("prompt"))
        prompts = [p if isinstance(p, list) else self.engine.text_prompt(p) for p in given]
        return await self._answer(call, ctx, prompts, "prompt")

    # ---- shared by both endpoints -----------------------------------------------------------

    async def _answer(self, call: Call, ctx: RequestContext, prompts: list[list[int]], param: str) -> Answer:
        how = plan(call, features=self._features, queue_timeout_s=self.options.queue_timeout_s,
                   remaining_s=ctx.remaining())
        window = self.engine.context_window
        budgets = [completion_budget(len(p), how.params.max_tokens, window, param) for p in prompts]
        if how.ignored:
            ctx.response_headers.append((IGNORED_HEADER, ", ".join(how.ignored).encode()))
        usage = Usage(prompt_tokens=sum(len(p) for p in prompts))
        requests = [
            GenerationRequest(prompt, how.for_choice(j, budget), deadline=how.deadline)
            for prompt, budget in zip(prompts, budgets, strict=True)
            for j in range(how.n)
        ]
        sources = [self._choice(i, request, how, usage) for i, request in enumerate(requests)]
        events = sources[0] if len(sources) == 1 else _merge(sources)
        chat = call.kind == "chat"
        model = str(call.body.get("model") or self.deployment.model or "local")
        if not call.stream:
            return await _complete(events, len(requests), chat=chat, model=model, usage=usage)
        try:
            # Wait for the first text before answering, so that a full queue or a deadline passed
            # in it is a 503 with Retry-After rather than an error in the middle of a stream.
            first = await anext(events)
        except BaseException:
            await events.aclose()
            raise
        writer = _chat_sse if chat else _text_sse
        return Stream(lambda stream: writer(
            stream, first, events, choices=len(requests), model=model, usage=usage,
            include_usage=call.include_usage,
        ))

    async def _choice(
        self, index: int, request: GenerationRequest, how: Plan, usage: Usage
    ) -> AsyncGenerator[Event, None]:
        """Text deltas of one choice with stop strings applied; counts its tokens in ``usage``."""
        matcher = StopMatcher(how.stops)
        pieces = self.engine.generate(request)
        try:
            async for piece in pieces:
                usage.completion_tokens += 1
                text, stopped = matcher.feed(piece.text)
                if stopped:
                    yield index, text, "stop"
                    return
                if piece.finish_reason is not None:
                    yield index, text + matcher.flush(), piece.finish_reason
                    return
                if text:
                    yield index, text, None
        finally:
            # Closing the engine's iterator frees the slot when we stop early (stop string, client gone).
            aclose = getattr(pieces, "aclose", None)
            if aclose is not None:
                await aclose()


async def _merge(sources: list[AsyncGenerator[Event, None]]) -> AsyncGenerator[Event, None]:
    """Events of several choices as they come; closing this cancels the choices still running."""
    queue: asyncio.Queue[Event | BaseException | None] = asyncio.Queue()

    async def pump(source: AsyncGenerator[Event, None]) -> None:
        try:
            async for event in source:
                queue.put_nowait(event)
            queue.put_nowait(None)
        except Exception as exc:
            queue.put_nowait(exc)

    tasks = [asyncio.create_task(pump(source)) for source in sources]
    try:
        for _ in range(len(tasks)):
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _complete(
    events: AsyncGenerator[Event, None], choices: int, *, chat: bool, model: str, usage: Usage
) -> Completion:
    texts = [""] * choices
    finish: list[str | None] = [None] * choices
    try:
        async for index, text, reason in events:
            texts[index] += text
            finish[index] = reason or finish[index]
    finally:
        await events.aclose()  # cancelled request: free the slots now
    if chat:
        body = chat_completion(
            id=new_id("chatcmpl"), model=model, usage=usage,
            choices=[chat_choice(i, texts[i], finish[i]) for i in range(choices)],
        )
    else:
        body = text_completion(
            id=new_id("cmpl"), model=model, usage=usage,
            choices=[text_choice(i, texts[i], finish[i]) for i in range(choices)],
        )
    return Completion(orjson.dumps(body), usage)


async def _chat_sse(
    stream: Stream, first: Event, events: AsyncGenerator[Event, None], *, choices: int, model: str, usage: Usage,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    chunk_id, created = new_id("chatcmpl"), int(time.time())
    try:
        # OpenAI opens every choice with the role and empty content.
        yield b"".join(
            sse_event(chat_chunk(id=chunk_id, model=model, created=created, index=i,
                                 delta={"role": "assistant", "content": ""}))
            for i in range(choices)
        )
        event: Event | None = first
        while event is not None:
            index, text, reason = event
            block = b""
            if text:
                block = sse_event(chat_chunk(id=chunk_id, model=model, created=created, index=index,
                                             delta={"content": text}))
            if reason is not None:
                block += sse_event(chat_chunk(id=chunk_id, model=model, created=created, index=index,
                                              delta={}, finish_reason=reason))
            yield block
            event = await anext(events, None)
        stream.usage = usage
        if include_usage:
            yield sse_event(chat_chunk(id=chunk_id, model=model, created=created, usage=usage))
        yield SSE_DONE
    finally:
        stream.usage = usage  # also when the client left early: what was generated is counted
        await events.aclose()


async def _text_sse(
    stream: Stream, first: Event, events: AsyncGenerator[Event, None], *, choices: int, model: str, usage: Usage,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    chunk_id, created = new_id("cmpl"), int(time.time())
    try:
        event: Event | None = first
        while event is not None:
            index, text, reason = event
            yield sse_event(text_chunk(id=chunk_id, model=model, created=created, index=index, text=text,
                                       finish_reason=reason))
            event = await anext(events, None)
        stream.usage = usage
        if include_usage:
            yield sse_event(text_chunk(id=chunk_id, model=model, created=created, usage=usage))
        yield SSE_DONE
    finally:
        stream.usage = usage
        await events.aclose()


def _text_message(message: dict[str, Any], index: int) -> dict[str, Any]:
    """A message whose content is a string, as chat templates expect (text parts joined)."""
    content = message.get("content")
    if isinstance(content, str):
        return message
    if content is None:
        return {**message, "content": ""}
    texts = []
    for part in content:
        if part.get("type") != "text":
            raise InvalidRequest(
                f"The local model reads text only; messages[{index}] has a {part.get('type')!r} part.",
                param=f"messages[{index}].content",
            )
        texts.append(str(part.get("text", "")))
    return {**message, "content": "".join(texts)}


def _text_prompts(prompt: Any) -> list[str | list[int]]:
    """The prompts of a text completion: a string, token ids, or a list of either."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if _token_ids(prompt):
            return [prompt]
        if all(isinstance(p, str) or (isinstance(p, list) and _token_ids(p)) for p in prompt):
            return list(prompt)
    raise InvalidRequest("'prompt' must be a non-empty string, a list of token ids, or a list of either.",
                         param="prompt")


def _token_ids(values: list[Any]) -> bool:
    return bool(values) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)
