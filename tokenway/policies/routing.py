"""Pick the deployment for a call, and fail over to the next one on a retryable error.

Deployments are taken in smooth weighted round-robin order (nginx's algorithm: spreads
weights evenly, no randomness), so a model with weights 3:1 gets its traffic 3:1; a
deployment that fails before sending anything is followed by the next in that order.
"""

from __future__ import annotations

from tokenway.context import RequestContext
from tokenway.deployments import Deployment, ModelTable
from tokenway.errors import GatewayError
from tokenway.policies.base import Handler
from tokenway.providers.base import Answer, Call


class _WeightedRoundRobin:
    __slots__ = ("_current", "_deployments", "_total")

    def __init__(self, deployments: list[Deployment]) -> None:
        self._deployments = deployments
        self._current = [0.0] * len(deployments)
        self._total = sum(d.config.weight for d in deployments)

    def order(self) -> list[Deployment]:
        if len(self._deployments) == 1:
            return self._deployments
        best = 0
        for i, deployment in enumerate(self._deployments):
            self._current[i] += deployment.config.weight
            if self._current[i] > self._current[best]:
                best = i
        self._current[best] -= self._total
        return self._deployments[best:] + self._deployments[:best]


class Route:
    def __init__(self, models: ModelTable) -> None:
        self._models = models
        self._balancers: dict[str, _WeightedRoundRobin] = {}

    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        name = call.body["model"]
        deployments = self._models.lookup(name)
        ctx.model = name
        balancer = self._balancers.get(name)
        if balancer is None:
            balancer = self._balancers[name] = _WeightedRoundRobin(deployments)
        failure: GatewayError | None = None
        for deployment in balancer.order():
            ctx.target = deployment
            ctx.deployment = deployment.name
            ctx.attempts += 1
            try:
                return await next(ctx, call)
            except GatewayError as error:
                remaining = ctx.remaining()
                if not error.retryable or (remaining is not None and remaining <= 0):
                    raise
                failure = error
        assert failure is not None  # every model has at least one deployment
        raise failure
