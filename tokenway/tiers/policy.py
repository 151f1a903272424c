"""Small-model routing: a public model name whose requests go to the cheapest tier able to answer.

The policy sits right after access. Access has checked the caller's key against the public name
and held the budget at the dearest rates of every tier (``AccessPolicy``'s ``tiers``); from here on
the request is a request for the chosen tier's model, so guards, the cache, structured output,
retries and fallbacks all apply as that model's, and the ledger and the log show the model that
answered.

1. **Pick**: the ``x-tokenway-tier`` header, when sent, names the tier (its name or model, or
   ``small``/``large`` for the first/last); else the scorer's score picks the first tier whose
   ``up_to`` is above it.
2. **Escalate**: an answer that fails a configured check (``tokenway.tiers.checks``) is dropped and
   the next tier asked, until the last, whose answer always goes out. A stream is held back until the
   check can tell, so nothing reached the client before the switch. Each extra call first holds its
   own worst case on the key's budget; one the budget cannot hold is not made and the answer in hand
   goes out. The dropped answer's cost is billed all the same (``RequestContext.prior_cost_nanos``).
   A tier named by the header is not escalated from: the caller chose it.
3. **Tell**: ``x-tokenway-tier`` and ``x-tokenway-tier-reason`` on the response, the decision in the
   request's log line (``ctx.tier``), ``tokenway_tier_decisions_total`` and
   ``tokenway_tier_escalations_total``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tokenway.config import GatewayConfig
from tokenway.context import RequestContext
from tokenway.errors import InvalidRequest
from tokenway.observability.logging import JsonLog
from tokenway.observability.metrics import Metrics
from tokenway.policies.base import Handler
from tokenway.policies.structured_output import Hold, StructuredOutputInvalid
from tokenway.protocol import Usage
from tokenway.providers.base import Answer, Call, Completion, Stream
from tokenway.tiers.checks import StreamPeek, answer_problem, wants_json
from tokenway.tiers.neighbours import NeighbourScorer, Sample, read_samples
from tokenway.tiers.options import Check, TierRouterConfig
from tokenway.tiers.scorer import features, heuristic_score
from tokenway.usage.cost import estimate_prompt_tokens

if TYPE_CHECKING:
    from tokenway.cache.semantic import Embedder

TIER_HEADER = b"x-tokenway-tier"
REASON_HEADER = b"x-tokenway-tier-reason"


@dataclass(slots=True)
class TierDecision:
    """Which tier served a routed request and why (written here; read by the log line)."""

    router: str
    tier: str
    reason: str  # "score", "override", or "escalated:<check>"
    score: float | None = None  # the scorer's, when it picked
    scorer: str | None = None  # heuristic or neighbours
    escalated_from: list[str] = field(default_factory=list)

    def for_log(self) -> dict[str, Any]:
        line: dict[str, Any] = {"router": self.router, "tier": self.tier, "reason": self.reason}
        if self.score is not None:
            line["score"], line["scorer"] = round(self.score, 3), self.scorer
        if self.escalated_from:
            line["escalated_from"] = self.escalated_from
        return line


class TierRouter:
    """One router's ladder and scorer."""

    def __init__(self, config: TierRouterConfig) -> None:
        self.config = config
        self.name = config.name
        self.tiers = config.tiers
        self.checks: frozenset[Check] = frozenset(config.escalate_on)
        self.neighbours: NeighbourScorer | None = None  # set once the samples are embedded
        by_name: dict[str, int] = {"small": 0, "large": len(self.tiers) - 1}
        for index, tier in enumerate(self.tiers):
            by_name[tier.model] = by_name[tier.label] = index
        self._by_name = by_name

    def named(self, value: str) -> int:
        """The tier the override header names, or the 400 that lists the names it takes."""
        index = self._by_name.get(value.strip().lower(), self._by_name.get(value.strip()))
        if index is None:
            names = sorted({*self._by_name})
            raise InvalidRequest(
                f"The header x-tokenway-tier names no tier of '{self.name}': {value!r}. Use one of "
                f"{', '.join(names)}, or leave the header out to let the router pick.",
                param="x-tokenway-tier", code="unknown_tier")
        return index

    async def score(self, body: dict[str, Any]) -> tuple[float, str]:
        """The request's score and the scorer that gave it (the heuristic until the samples are embedded).
        ``neighbours`` averages its samples' vote with the heuristic, which also sees tools and depth."""
        found = features(body)
        if self.neighbours is not None:
            return (await self.neighbours.score(found.text) + heuristic_score(found)) / 2, "neighbours"
        return heuristic_score(found), "heuristic"

    def for_score(self, score: float) -> int:
        for index, tier in enumerate(self.tiers):
            if tier.up_to is None or score < tier.up_to:
                return index
        return len(self.tiers) - 1


async def open_tiers(config: GatewayConfig, metrics: Metrics, log: JsonLog, hold: Hold | None) -> TierRouting | None:
    """The routing policy, or None when no router is configured (then it is not in the list). Sample
    files are read now (a bad one stops the start, naming its line); they are embedded in the
    background, and the heuristic scores until they are."""
    if not config.tiers:
        return None
    routers = [TierRouter(router) for router in config.tiers]
    samples = {r.name: read_samples(r.config.samples) for r in routers if r.config.samples is not None
               and r.config.scorer == "neighbours"}
    routing = TierRouting(routers, metrics, hold)
    if samples:
        routing.loading = asyncio.get_running_loop().create_task(routing.embed_samples(samples, log))
    return routing


class TierRouting:
    """The policy. Build it with ``open_tiers``."""

    def __init__(self, routers: list[TierRouter], metrics: Metrics, hold: Hold | None = None) -> None:
        self.routers = {router.name: router for router in routers}
        self._metrics = metrics
        self._hold = hold
        self.loading: asyncio.Task[None] | None = None
        self._embedder: Embedder | None = None

    async def embed_samples(self, samples: dict[str, list[Sample]], log: JsonLog) -> None:
        """Embed each router's samples (after start, off the event loop); its neighbours scorer then takes over."""
        from tokenway.cache.semantic import Embedder

        try:
            self._embedder = embedder = await asyncio.to_thread(Embedder.load)
            for name, rows in samples.items():
                router = self.routers[name]
                router.neighbours = await asyncio.to_thread(NeighbourScorer.build, embedder, rows,
                                                            router.config.neighbours)
                log.event("tier_samples_ready", router=name, samples=len(rows))
        except Exception as exc:  # the heuristic keeps scoring: routing degrades, it does not stop
            log.event("tier_samples_failed", level="error", error=str(exc),
                      note="the heuristic scorer is used instead of neighbours")

    async def aclose(self) -> None:
        if self.loading is not None:
            self.loading.cancel()
        if self._embedder is not None:
            self._embedder.close()

    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        router = self.routers.get(call.body.get("model"))  # type: ignore[arg-type]
        if router is None:
            return await next(ctx, call)
        if ctx.tier_override is not None:
            index = router.named(ctx.tier_override)
            decision = TierDecision(router.name, router.tiers[index].label, "override")
            last = index  # the caller chose the tier: its answer is the answer
        else:
            score, scorer = await router.score(call.body)
            index = router.for_score(score)
            decision = TierDecision(router.name, router.tiers[index].label, "score", score, scorer)
            last = len(router.tiers) - 1
        ctx.tier = decision
        json = wants_json(call.body)
        while True:
            tier = router.tiers[index]
            attempt = Call(call.kind, {**call.body, "model": tier.model}, call.prompt_estimate)
            if index == last or not router.checks:
                return self._told(ctx, decision, await next(ctx, attempt))
            upper = router.tiers[index + 1]
            further = Call(call.kind, {**call.body, "model": upper.model}, call.prompt_estimate)
            answer, problem = await self._answer_or_problem(ctx, next, attempt, further, router.checks, json)
            if answer is not None:
                return self._told(ctx, decision, answer)
            self._metrics.tier_escalations.labels(router.name, tier.label, problem).inc()
            decision.escalated_from.append(tier.label)
            decision.tier, decision.reason = upper.label, f"escalated:{problem}"
            index += 1

    async def _answer_or_problem(
        self, ctx: RequestContext, next: Handler, attempt: Call, further: Call, checks: frozenset[Check], json: bool
    ) -> tuple[Answer | None, Check | None]:
        """This tier's answer to send (with no problem), or the check it failed once ``further``, the next
        tier's call, is held on the budget (the dropped answer's cost then goes on the bill)."""
        try:
            answer = await next(ctx, attempt)
        except StructuredOutputInvalid:  # structured output's own retries on this tier were spent
            if "invalid_json" not in checks or not await self._may_pay(ctx, further):
                raise
            ctx.prior_cost_nanos += _rated(ctx, ctx.usage)  # what those retries used
            ctx.usage = None
            return None, "invalid_json"
        answer, problem = await _checked(answer, json, checks)
        if problem is None or not await self._may_pay(ctx, further):
            return answer, None
        # a stream dropped before its usage came is billed its prompt estimate (the few tokens read are not)
        ctx.prior_cost_nanos += _rated(ctx, answer.usage or Usage(estimate_prompt_tokens(attempt), 0))
        if isinstance(answer, Stream):
            await answer.aclose()
        return None, problem

    async def _may_pay(self, ctx: RequestContext, further: Call) -> bool:
        return self._hold is None or await self._hold(ctx, further)

    def _told(self, ctx: RequestContext, decision: TierDecision, answer: Answer) -> Answer:
        self._metrics.tier_decisions.labels(decision.router, decision.tier, decision.reason).inc()
        ctx.response_headers += [(TIER_HEADER, decision.tier.encode()), (REASON_HEADER, decision.reason.encode())]
        return answer


async def _checked(answer: Answer, json: bool, checks: frozenset[Check]) -> tuple[Answer, Check | None]:
    """The answer (a stream: re-made with the blocks read so far in front) and the check it fails."""
    if isinstance(answer, Completion):
        return answer, answer_problem(answer.body, json, checks)
    peek = StreamPeek(json, checks)
    held: list[bytes] = []
    try:
        async for block in answer:
            held.append(block)
            if peek.feed(block):
                break
        else:
            peek.verdict(finished=True)
    except BaseException:  # failed (or cancelled) before the client saw a byte: the stream is ours to close
        await answer.aclose()
        raise
    return Stream(lambda outer: _Replay(held, answer, outer)), peek.problem


class _Replay:
    """The blocks read while checking, then the rest of the stream as it comes."""

    __slots__ = ("_held", "_inner", "_outer")

    def __init__(self, held: list[bytes], inner: Stream, outer: Stream) -> None:
        self._held, self._inner, self._outer = held, inner, outer
        outer.usage = inner.usage

    def __aiter__(self) -> _Replay:
        return self

    @property
    def has_block(self) -> bool:  # a held block is in hand: the writer need not wait for it
        return bool(self._held) or self._inner.ready()

    async def __anext__(self) -> bytes:
        if self._held:
            return self._held.pop(0)
        try:
            return await self._inner.__anext__()
        finally:
            self._outer.usage = self._inner.usage

    async def aclose(self) -> None:
        await self._inner.aclose()


def _rated(ctx: RequestContext, usage: Usage | None) -> int:
    """What ``usage`` cost at the rates of the deployment that just answered."""
    return 0 if ctx.target is None else ctx.target.rates.usage_nanos(usage)
