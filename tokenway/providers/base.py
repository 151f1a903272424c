"""The provider protocol and the two shapes an answer takes: ``Completion`` and ``Stream``.

A provider turns one OpenAI-shaped call into either a finished ``Completion`` (the JSON bytes
to send, plus usage) or a ``Stream`` (SSE-encoded byte blocks, each holding whole events).
Failures before the first byte raise ``tokenway.errors.GatewayError`` subclasses, so policies
can retry or fall back; failures after it are raised from the stream's iterator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from tokenway.errors import InvalidRequest
from tokenway.protocol import Usage

if TYPE_CHECKING:
    from pathlib import Path

    import aiohttp

    from tokenway.config import DeploymentConfig
    from tokenway.context import RequestContext
    from tokenway.providers.upstream import HttpClient


# A call's kind is also the name of the provider method that serves it (``Provider.chat`` ...).
# ``responses`` is a Responses API request relayed as it is, to a backend that speaks it natively.
CallKind = Literal["chat", "completions", "embeddings", "responses"]


@dataclass(slots=True)
class Call:
    """One validated request, as the client sent it (``body['model']`` is the public name)."""

    kind: CallKind
    body: dict[str, Any]
    prompt_estimate: int | None = None  # memo of usage.cost.estimate_prompt_tokens (limits and budgets both ask)

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def include_usage(self) -> bool:
        options = self.body.get("stream_options")
        return bool(options and options.get("include_usage"))

    @property
    def max_tokens(self) -> int | None:
        if self.kind == "embeddings":
            return 0  # an embedding generates nothing: no output tokens to hold on a budget
        if self.kind == "responses":
            value = self.body.get("max_output_tokens")
        else:
            value = self.body.get("max_completion_tokens") or self.body.get("max_tokens")
        return int(value) if value else None


@dataclass(slots=True)
class Completion:
    """A finished, non-streaming answer: the body is sent to the client as it is."""

    body: bytes
    usage: Usage | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class Stream:
    """A streaming answer: an async iterator of SSE byte blocks, read once.

    The source is built from the stream itself (``source(stream)``) so that it can record
    usage on it as it sees it. Whoever holds the stream must ``aclose()`` it; close callbacks
    (freeing a concurrency slot, settling usage) run exactly once, also on cancellation.
    """

    __slots__ = ("_closed", "_on_close", "_source", "usage")

    def __init__(self, source: Callable[[Stream], AsyncIterator[bytes]]) -> None:
        self.usage: Usage | None = None
        self._on_close: list[Callable[[Stream], None]] = []
        self._closed = False
        self._source = source(self)

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> bytes:
        return await self._source.__anext__()

    def ready(self) -> bool:
        """Whether the next block is already in hand (routing's probe read it): ``__anext__`` then
        returns it without waiting, and the writer skips the machinery of a wait with heartbeats."""
        return bool(getattr(self._source, "has_block", False))

    def on_close(self, callback: Callable[[Stream], None]) -> None:
        self._on_close.append(callback)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        source, callbacks = self._source, self._on_close
        # Let go of the source and the callbacks: both usually refer back to this stream (a
        # generator's frame, a wrapper's ``outer``, a closure), and a cycle left behind on every
        # request is work for the garbage collector, in pauses of milliseconds.
        self._source, self._on_close = _ENDED, []
        try:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            for callback in reversed(callbacks):
                callback(self)


class _Ended:
    """The source of a closed stream: it has nothing more."""

    def __aiter__(self) -> _Ended:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration


_ENDED = _Ended()

Answer = Completion | Stream


@dataclass(slots=True)
class ProviderResources:
    """What the app shares with every provider it builds (owned by the app's lifespan)."""

    http: aiohttp.ClientSession  # general-purpose: model lists, health checks, Ollama
    upstream: HttpClient  # the relayed calls to OpenAI-compatible backends (the hot path)
    data_dir: Path  # the app's data directory (e.g. the local engine keeps converted model files there)


class ProviderOptions(BaseModel):
    """Provider-specific deployment fields; subclasses declare theirs. Unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


class Provider(Protocol):
    """One backend deployment. Implementations are registered by name in ``registry``."""

    Options: ClassVar[type[ProviderOptions]]

    async def start(self) -> None:
        """Connect, load or warm up; the gateway is not ready until every provider has started."""

    async def chat(self, call: Call, ctx: RequestContext) -> Answer: ...

    async def completions(self, call: Call, ctx: RequestContext) -> Answer: ...

    async def embeddings(self, call: Call, ctx: RequestContext) -> Answer:
        """A ``Completion`` in OpenAI's embeddings shape. A provider that serves none leaves it out (the
        gateway then answers ``not_served``), or raises ``not_served`` itself."""
        ...

    async def responses(self, call: Call, ctx: RequestContext) -> Answer:
        """A Responses API request relayed as it is, its answer (a ``response`` body, or Responses
        events) as the backend sent it. Only a deployment that speaks Responses natively serves it."""
        ...

    async def models(self) -> list[str]:
        """Upstream model ids this deployment serves (used by health checks and listings)."""
        ...

    async def aclose(self) -> None: ...


def not_served(call: Call, deployment: str | None = None) -> InvalidRequest:
    """The 400 for a call of a kind this model's backend does not serve (embeddings from a chat model)."""
    model = call.body.get("model")
    where = f" (deployment {deployment})" if deployment else ""
    return InvalidRequest(f"The model {model!r}{where} does not serve {call.kind}; send {call.kind} to a model "
                          "that does (GET /v1/models lists them).", param="model", code="model_not_supported")


ProviderFactory = Callable[["DeploymentConfig", ProviderOptions, ProviderResources], Provider]
