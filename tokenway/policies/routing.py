"""Pick the deployment for one attempt of a call, and learn from how it went.

For the model in ``ctx.model`` (set by ``Resilience``; else the body's ``model``), routing
drops deployments it should not use now — tried already in this request, ejected by their
circuit breaker, failing active health checks, still inside a ``Retry-After`` they sent — and
lets the model's balancing strategy choose among the rest. If every remaining deployment is
at its concurrency limit, the call waits in the model's admission queue. The outcome feeds the
deployment's breaker and its time-to-first-byte EWMA; a stream is watched to its end.
"""

from __future__ import annotations

import time

from tokenway.clock import SYSTEM_CLOCK, Clock
from tokenway.config import GatewayConfig
from tokenway.context import RequestContext
from tokenway.deployments import Deployment, ModelTable
from tokenway.errors import GatewayError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from tokenway.policies.admission import AdmissionQueue, Shed
from tokenway.policies.base import Handler
from tokenway.providers.base import Answer, Call, Stream
from tokenway.routing import balancers
from tokenway.routing.breaker import CircuitBreaker
from tokenway.routing.observe import observe_stream
from tokenway.routing.options import BreakerConfig, RetryConfig
from tokenway.routing.stats import RoutingStats

_HEALTH_FAILURES = (UpstreamError, UpstreamTimeout, UpstreamUnavailable)


class _Model:
    __slots__ = ("balancer", "breaker", "name", "queue", "retry")

    def __init__(self, name: str, balancer: balancers.Balancer, queue: AdmissionQueue, retry: RetryConfig,
                 breaker: BreakerConfig) -> None:
        self.name, self.balancer, self.queue, self.retry, self.breaker = name, balancer, queue, retry, breaker


class Route:
    def __init__(
        self, models: ModelTable, config: GatewayConfig, stats: RoutingStats, clock: Clock = SYSTEM_CLOCK,
        previous: Route | None = None,
    ) -> None:
        """``previous``: the route a config reload replaces; a model whose queue settings did not change keeps
        its queue, so the calls waiting in it are woken by the same deployments' releases."""
        self._table = models
        self._stats = stats
        self._clock = clock  # breakers, Retry-After cooldowns and the queue all read this one
        self._models: dict[str, _Model] = {}
        for model in config.models:
            deployments = models.lookup(model.name)
            slots = sum(d.config.max_concurrency or 1 for d in deployments)
            kept = previous._models.get(model.name) if previous is not None else None
            if kept is not None and kept.queue.config == model.queue:
                queue, queue.slots = kept.queue, max(1, slots)
            else:
                queue = AdmissionQueue(model.queue, slots, clock)
            state = _Model(model.name, balancers.build(model.routing), queue, model.retry, model.breaker)
            for deployment in deployments:
                self._adopt(state, deployment)
            self._models[model.name] = state

    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        if ctx.model is None:
            ctx.model = call.body["model"]
        model = self._models.get(ctx.model)
        if model is None:
            self._table.lookup(ctx.model)  # raises the 404 that names the known models
            raise AssertionError("every configured model has routing state")
        deployment = await self._choose(ctx, call, model)
        ctx.target = deployment
        ctx.deployment = deployment.name
        ctx.attempts += 1
        deployment.picks += 1
        ctx.tried.add(deployment.name)
        started = time.perf_counter()
        try:
            answer = await next(ctx, call)
        except GatewayError as error:
            self._failed(deployment, error)
            raise
        except BaseException:
            deployment.breaker.release_probe()
            raise
        if isinstance(answer, Stream):
            return await observe_stream(answer, deployment, started, model.retry.stream_probe, ctx)
        deployment.observe_ttft(time.perf_counter() - started)
        deployment.breaker.success()
        return answer

    async def _choose(self, ctx: RequestContext, call: Call, model: _Model) -> Deployment:
        woken = False
        try:
            while True:
                candidates = self._routable(ctx, model)
                free = [d for d in candidates if not d.full]
                if free and not (model.queue.busy() and not woken):
                    deployment, reason = model.balancer.pick(free, call)
                    if deployment.breaker.acquire():
                        self._stats.count("pick." + reason)
                        return deployment
                    continue  # half-open and its probe slot is taken: choose again without it
                if woken:
                    model.queue.taken()
                    woken = False
                self._stats.count("queue.wait")
                queued_at = self._clock.now()
                try:
                    await model.queue.wait(ctx.priority, ctx.remaining())
                except Shed as shed:
                    self._stats.count("shed.queue" if model.queue.enabled else "shed.no_queue")
                    raise shed from None
                finally:
                    ctx.queue_wait_s = (ctx.queue_wait_s or 0.0) + self._clock.now() - queued_at
                woken = True
        finally:
            if woken:
                model.queue.taken()

    def join(self, model: str, deployment: Deployment) -> None:
        """A worker found while running (discovery) starts taking ``model``'s calls."""
        state = self._models[model]
        self._adopt(state, deployment)
        state.queue.slots += deployment.config.max_concurrency or 1
        self._table.add(model, deployment)
        self._stats.count("discovery.joined")

    def leave(self, model: str, deployment: Deployment) -> None:
        """No new call goes to ``deployment``; the calls it has go on to their end."""
        state = self._models[model]
        self._table.remove(model, deployment)
        state.queue.slots = max(1, state.queue.slots - (deployment.config.max_concurrency or 1))
        self._stats.count("discovery.left")

    def _adopt(self, state: _Model, deployment: Deployment) -> None:
        if not deployment.breaker.follows(state.breaker, self._clock):  # a reload keeps an unchanged one's state
            deployment.breaker = CircuitBreaker(state.breaker, self._clock)
        deployment.on_release = state.queue.released

    def queue_lengths(self) -> dict[str, int]:
        """Calls waiting for a slot, per model (exported as ``tokenway_queue_length``)."""
        return {name: len(model.queue) for name, model in self._models.items()}

    def _routable(self, ctx: RequestContext, model: _Model) -> list[Deployment]:
        """Deployments worth a try now, dropping the least suitable first while any remain."""
        now = self._clock.now()
        tried = ctx.tried
        deployments = self._table.lookup(model.name)
        if not deployments:  # discovery has found no worker yet, or the last one left
            self._stats.count("skip.no_workers")
            raise Shed(f"No worker of '{ctx.model}' is known right now (discovery found none); retry shortly.",
                       code="no_healthy_deployment", retry_after=5.0)
        allowed = [d for d in deployments if d.breaker.allows()]
        if not allowed:
            self._stats.count("skip.all_breakers_open")
            wait = min(d.breaker.closes_in() for d in deployments)
            raise Shed(f"Every deployment of '{ctx.model}' is failing (circuit breakers open); retry shortly.",
                       code="no_healthy_deployment", retry_after=max(1.0, wait))
        if len(allowed) < len(deployments):
            self._stats.count("skip.breaker_open")
        if all(d.healthy and d.cooldown_until <= now and d.name not in tried for d in allowed):
            return allowed  # the usual case, in one pass
        for keep, reason in (
            (lambda d: d.healthy, "skip.unhealthy"),
            (lambda d: d.cooldown_until <= now, "skip.retry_after"),
            (lambda d: d.name not in tried, "skip.tried"),
        ):
            narrowed = [d for d in allowed if keep(d)]
            if narrowed and len(narrowed) < len(allowed):
                self._stats.count(reason)
                allowed = narrowed
        return allowed

    def _failed(self, deployment: Deployment, error: GatewayError) -> None:
        if isinstance(error, _HEALTH_FAILURES):
            deployment.failures += 1
            deployment.breaker.failure()
            if error.retry_after:
                deployment.cooldown_until = self._clock.now() + error.retry_after
        elif not error.retryable and not isinstance(error, Shed):
            deployment.breaker.success()  # it answered properly, with a 4xx about the request
        else:
            deployment.breaker.release_probe()  # our own shedding: says nothing about the deployment
