"""Record one usage ledger row per authenticated request, after the response is complete."""

from __future__ import annotations

import time

from tokenway.context import RequestContext
from tokenway.ids import IdGenerator
from tokenway.policies.base import Handler
from tokenway.providers.base import Answer, Call
from tokenway.stores.base import KeyRecord, UsageRecord
from tokenway.usage.ledger import Ledger


class RecordUsage:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._new_id = IdGenerator("u_")

    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        ctx.defer(self._record)
        return await next(ctx, call)

    def _record(self, ctx: RequestContext) -> None:
        key = ctx.key
        usage = ctx.usage
        cost = ctx.cost_nanos  # what the budget settled, when a budget applied
        if cost is None:
            cost = ctx.target.rates.usage_nanos(usage) if ctx.target is not None else 0
            ctx.cost_nanos = cost  # the metrics count the same spend as the ledger
        self._ledger.record(UsageRecord(
            id=self._new_id(),
            request_id=ctx.request_id,
            ts=time.time(),
            key_id=key.id if key is not None else None,
            team=key.team if key is not None else None,
            model=ctx.model,
            deployment=ctx.deployment,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cached_tokens=usage.cached_tokens if usage else 0,
            cost_nanos=cost,
            latency_ms=round(ctx.elapsed_ms(), 3),
            status=ctx.status,
        ))
