"""Per-deployment concurrency: a deployment at its ``max_concurrency`` takes no more calls."""

from __future__ import annotations

from tokenway.context import RequestContext
from tokenway.deployments import Deployment
from tokenway.errors import Overloaded
from tokenway.policies.base import Handler
from tokenway.providers.base import Answer, Call, Stream


class LimitConcurrency:
    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        deployment: Deployment = ctx.target
        if deployment.full:
            raise Overloaded(
                f"The deployment {deployment.name} is at its limit of {deployment.config.max_concurrency} "
                "concurrent requests; retry shortly.",
                retry_after=1,
            )
        deployment.in_flight += 1
        try:
            answer = await next(ctx, call)
        except BaseException:
            deployment.in_flight -= 1
            raise
        if isinstance(answer, Stream):
            answer.on_close(lambda _: _release(deployment))
        else:
            deployment.in_flight -= 1
        return answer


def _release(deployment: Deployment) -> None:
    deployment.in_flight -= 1
