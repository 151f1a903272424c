"""The gateway in process: the real app over ``httpx.ASGITransport``, scripted providers, a fake clock.

No sockets and no sleeping. Deployments say ``provider: fake``; each one is a ``ScriptedProvider``
told what to do per call. Everything on the request path that waits (retry backoff, Retry-After,
the admission queue, a slow fake) waits on the ``FakeClock``, which jumps forward whenever
nothing else can run::

    async with gateway(YAML) as gw:            # models: [{name: m, deployments: [{provider: fake, name: a}]}]
        gw.fake("a").script(fail(http_error(503)), reply("Hi"))
        r = await gw.chat()                     # retried after a backoff, on fake time
        assert r.status_code == 200 and len(gw.fake("a").calls) == 2

Real-socket tests (``tests/servers.py``, ``tests/fakes.py``) stay for what needs sockets:
streaming to a real client, hang-ups, the HTTP layer.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import httpx
import orjson

from tokenway.app import Gateway
from tokenway.asgi import Message, Scope
from tokenway.clock import SYSTEM_CLOCK, Clock
from tokenway.config import DeploymentConfig, GatewayConfig, Settings, parse_config
from tokenway.context import RequestContext
from tokenway.deployments import Deployment, ModelTable
from tokenway.errors import GatewayError, UpstreamError, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from tokenway.policies.base import Policy
from tokenway.policies.resilience import Resilience
from tokenway.protocol import SSE_DONE, Usage, sse_event
from tokenway.providers.base import Answer, Call, Completion, ProviderOptions, ProviderResources, Stream
from tokenway.providers.registry import register_provider

T = TypeVar("T")

MESSAGES = [{"role": "user", "content": "hi"}]
WORDS = ("Hello", " from", " the", " fake", " provider", ".")
TEXT = "".join(WORDS)

# Loop turns that ``FakeClock.run`` lets pass before it decides everyone is waiting on the clock.
# Nothing on the in-process path waits on a thread or a socket, so each turn moves every runnable
# task to its next wait; the deepest hand-over (a queue slot passed through ``asyncio.wait``) takes 3.
_SETTLE_TURNS = 20


class FakeClock(Clock):
    """Time that moves only when told: ``advance(seconds)``, or ``run(aw)`` which jumps over every wait."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []  # (deadline, order, waker)
        self._seq = 0
        self._new_sleeper: asyncio.Future[None] | None = None
        self.slept: list[float] = []  # every sleep asked for, in order (backoffs, Retry-After waits, ...)

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        waker = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._sleepers, (self._now + seconds, self._seq, waker))
        if self._new_sleeper is not None and not self._new_sleeper.done():
            self._new_sleeper.set_result(None)
        try:
            await waker
        finally:
            waker.cancel()  # a cancelled sleep stays in the heap until its deadline, then is dropped

    def pending(self) -> list[float]:
        """Seconds left for each sleep still waiting, soonest first."""
        return sorted(deadline - self._now for deadline, _, waker in self._sleepers if not waker.done())

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleep due by then (they run at the caller's next await)."""
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, waker = heapq.heappop(self._sleepers)
            if not waker.done():
                waker.set_result(None)

    async def run(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable``; whenever everything is waiting on the clock, jump to the next deadline."""
        task = asyncio.ensure_future(awaitable)
        try:
            while True:
                for _ in range(_SETTLE_TURNS):
                    await asyncio.sleep(0)
                if task.done():
                    return task.result()
                pending = self.pending()
                if pending:
                    self.advance(pending[0])
                    continue
                # Waiting on something other than the clock (a test's event): until it is done or sleeps.
                self._new_sleeper = asyncio.get_running_loop().create_future()
                await asyncio.wait((task, self._new_sleeper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            task.cancel()


@dataclass(frozen=True)
class Step:
    """What a ``ScriptedProvider`` does with one call."""

    pieces: tuple[str, ...] = WORDS  # the answer's text; a stream sends one chunk per piece
    error: GatewayError | None = None  # raised instead of answering
    after: int | None = None  # with ``error``, on a stream: chunks sent first (0: the head, then nothing)
    delay: float = 0.0  # seconds on the clock before the call returns (or fails)


def reply(*pieces: str, delay: float = 0.0) -> Step:
    """Answer: JSON with the pieces joined, or a stream of one chunk per piece (default: ``WORDS``)."""
    return Step(pieces=pieces or WORDS, delay=delay)


def fail(error: GatewayError, *, after: int | None = None, delay: float = 0.0) -> Step:
    """Raise ``error`` from the call (before any byte), or, with ``after``, mid-stream after that many chunks."""
    return Step(error=error, after=after, delay=delay)


def http_error(status: int, retry_after: float | None = None) -> GatewayError:
    """What the openai provider raises when its backend answers ``status``."""
    message = f"The backend answered {status}."
    if status == 429 or status >= 500:
        return UpstreamError(message, upstream_status=status, retry_after=retry_after)
    body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}})
    return UpstreamRejected(message, status=status, body=body)


def context_overflow() -> GatewayError:
    """A backend's 400 for a prompt longer than its context window."""
    body = orjson.dumps({"error": {"message": "This model's maximum context length is 4096 tokens.",
                                   "type": "invalid_request_error", "param": "messages",
                                   "code": "context_length_exceeded"}})
    return UpstreamRejected("The backend answered 400.", status=400, body=body)


def timed_out() -> GatewayError:
    return UpstreamTimeout("The backend sent nothing within 60s.", retry_after=1)


def unreachable() -> GatewayError:
    return UpstreamUnavailable("Could not reach the backend: connection refused.")


class ScriptedProvider:
    """A provider that follows its script, one step per call, then repeats ``then`` (default: answer)."""

    Options: ClassVar[type[ProviderOptions]] = ProviderOptions

    def __init__(self, deployment: DeploymentConfig, options: ProviderOptions, resources: ProviderResources) -> None:
        self.name = deployment.name or ""
        self.model = deployment.model or ""
        self.clock: Clock = SYSTEM_CLOCK  # the harness hands it the gateway's clock
        self.calls: list[dict[str, Any]] = []  # the body of every call it got
        self._steps: deque[Step] = deque()
        self._then = reply()

    def script(self, *steps: Step, then: Step | None = None) -> None:
        """Do ``steps`` on the next calls, in order; after them, ``then`` on every call."""
        self._steps.extend(steps)
        if then is not None:
            self._then = then

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def models(self) -> list[str]:
        return [self.model]

    async def chat(self, call: Call, ctx: RequestContext) -> Answer:
        return await self._answer(call)

    async def completions(self, call: Call, ctx: RequestContext) -> Answer:
        return await self._answer(call)

    async def _answer(self, call: Call) -> Answer:
        self.calls.append(call.body)
        step = self._steps.popleft() if self._steps else self._then
        if step.delay:
            await self.clock.sleep(step.delay)
        if step.error is not None and (step.after is None or not call.stream):
            raise _fresh(step.error)
        usage = Usage(prompt_tokens=7, completion_tokens=len(step.pieces))
        if call.stream:
            return Stream(lambda stream: self._chunks(stream, call, step, usage))
        text, chat = "".join(step.pieces), call.kind == "chat"
        message = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
        body = {"id": "fake-1", "object": "chat.completion" if chat else "text_completion",
                "created": 1, "model": self.model, "usage": usage.as_dict(),
                "choices": [{"index": 0, **message, "finish_reason": "stop"}]}
        return Completion(body=orjson.dumps(body), usage=usage)

    async def _chunks(self, stream: Stream, call: Call, step: Step, usage: Usage) -> AsyncIterator[bytes]:
        chat = call.kind == "chat"
        for i, piece in enumerate(step.pieces):
            if step.error is not None and i == step.after:
                raise _fresh(step.error)
            choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
            yield sse_event({"id": "fake-1", "object": "chat.completion.chunk" if chat else "text_completion",
                             "created": 1, "model": self.model, "choices": [{**choice, "finish_reason": None}]})
        if step.error is not None:
            raise _fresh(step.error)
        stream.usage = usage
        yield SSE_DONE


def _fresh(error: GatewayError) -> GatewayError:
    # The gateway may annotate an error it relays (a Retry-After) and raising keeps a traceback: a
    # step repeated over several calls raises a copy of its error each time.
    clone = type(error).__new__(type(error), *error.args)
    clone.__dict__.update(error.__dict__)
    return clone


register_provider("fake", ScriptedProvider)


class InProcessGateway(Gateway):
    """The real gateway on the fake clock; ``extra`` policies run just before retries and fallbacks."""

    def __init__(self, settings: Settings, config: GatewayConfig, clock: Clock, extra: Sequence[Policy] = ()) -> None:
        super().__init__(settings, config, clock=clock)
        self.extra = list(extra)

    def policies(self, models: ModelTable, config: GatewayConfig) -> list[Policy]:
        for deployment in models.all():
            if isinstance(deployment.provider, ScriptedProvider):
                deployment.provider.clock = self.clock
        chain: list[Policy] = []
        for policy in super().policies(models, config):
            if isinstance(policy, Resilience):
                chain += self.extra
            chain.append(policy)
        return chain


@dataclass
class Harness:
    """What a test holds: the started app, a client bound to it in process, and the app's clock."""

    app: InProcessGateway
    client: httpx.AsyncClient
    clock: FakeClock

    def fake(self, deployment: str) -> ScriptedProvider:
        provider = self.deployment(deployment).provider
        assert isinstance(provider, ScriptedProvider), f"{deployment} is not a fake deployment"
        return provider

    def deployment(self, name: str) -> Deployment:
        found = [d for d in self.app.models.all() if d.name == name]
        assert found, f"no deployment {name!r}; there are {[d.name for d in self.app.models.all()]}"
        return found[0]

    def decisions(self) -> dict[str, int]:
        """Routing decisions by reason, as ``GET /admin/routing`` shows them."""
        return self.app.routing.snapshot()

    def request(self, model: str = "m", *, headers: dict[str, str] | None = None,
                **body: Any) -> Awaitable[httpx.Response]:
        """One chat completion, not yet awaited (for running several under ``clock.run``)."""
        return self.client.post("/v1/chat/completions", headers=headers,
                                json={"model": model, "messages": MESSAGES, **body})

    async def chat(self, model: str = "m", *, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
        """One chat completion, run to its end with the clock jumping over every wait."""
        return await self.clock.run(self.request(model, headers=headers, **body))


def sse_data(response: httpx.Response) -> list[Any]:
    """The ``data:`` payloads of an SSE response, JSON-decoded, ``[DONE]`` as the string."""
    out: list[Any] = []
    for line in response.text.split("\n"):
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


def streamed_text(response: httpx.Response) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in sse_data(response)
                   if isinstance(c, dict) and c.get("choices"))


@asynccontextmanager
async def gateway(
    config_yaml: str, *, clock: FakeClock | None = None, master_key: str | None = None,
    extra: Sequence[Policy] = (),
) -> AsyncIterator[Harness]:
    """The gateway serving ``config_yaml`` in process, started and ready; shut down on leaving."""
    clock = clock or FakeClock()
    app = InProcessGateway(Settings(master_key=master_key), parse_config(config_yaml), clock, extra)
    async with _lifespan(app):
        started = asyncio.get_running_loop().time()
        while not app.is_ready():  # providers start in the background (fakes at once)
            assert asyncio.get_running_loop().time() - started < 10, "no deployment started (see the log)"
            await asyncio.sleep(0.001)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tokenway.test") as client:
            yield Harness(app, client, clock)


@asynccontextmanager
async def _lifespan(app: Gateway) -> AsyncIterator[None]:
    """Run the app's ASGI lifespan: startup before the block, shutdown after it."""
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    task = asyncio.ensure_future(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    started = await from_app.get()
    if started["type"] != "lifespan.startup.complete":
        await task
        raise RuntimeError(f"the gateway failed to start: {started.get('message')}")
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        await from_app.get()
        await task

