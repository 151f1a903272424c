"""Budgets in money per key and team: reserve the worst case up front, settle to the real cost.

After routing has picked a deployment (its price is the price), the request reserves
``(estimated prompt + max_tokens)`` tokens at that price on every budget that applies, in one
atomic operation (Lua on Redis, one uninterrupted call in memory): concurrent requests on any
number of replicas can never commit more than a budget holds. When the request ends, whatever
happened (success, upstream error, client hang-up), the reservation is settled to the real
cost and the rest is given back. A budgeted request that names no ``max_tokens`` is given
``access.budget_max_tokens``, so that the reservation really is the worst case.
"""

from __future__ import annotations

import time

from tokenway.context import RequestContext
from tokenway.errors import RateLimited
from tokenway.policies.base import Handler
from tokenway.policies.limits import StoreGuard
from tokenway.providers.base import Answer, Call
from tokenway.stores.base import NANOS_PER_DOLLAR, Budget, BudgetLine, Counters, CountersUnavailable, KeyRecord
from tokenway.usage.cost import Rates, estimate_prompt_tokens
from tokenway.usage.options import AccessConfig


class BudgetExceeded(RateLimited):
    """OpenAI's answer for a spent quota: 429 ``insufficient_quota`` (the SDK raises RateLimitError)."""

    type = "insufficient_quota"
    code = "insufficient_quota"


def budget_lines(key: KeyRecord, access: AccessConfig) -> list[BudgetLine]:
    lines = []
    if key.budget is not None:
        lines.append(_line("key", key.id, key.budget))
    team = access.teams.get(key.team or "")
    if team is not None and team.budget is not None:
        lines.append(_line("team", key.team or "", team.budget))
    return lines


def _line(scope: str, name: str, budget: Budget) -> BudgetLine:
    return BudgetLine(f"budget:{scope}:{name}:{budget.label()}", budget.nanos, budget.ttl_s(), scope, budget)


class Budgets:
    def __init__(self, counters: Counters, access: AccessConfig, guard: StoreGuard) -> None:
        self._counters = counters
        self._access = access
        self._guard = guard
        # key id -> (the record they were made for, UTC day number, lines): names are rebuilt only
        # when the key changes or a new day (a new counter) begins.
        self._lines: dict[str, tuple[KeyRecord, int, list[BudgetLine]]] = {}

    def lines(self, key: KeyRecord) -> list[BudgetLine]:
        day = int(time.time() // 86400)
        cached = self._lines.get(key.id)
        if cached is not None and cached[0] is key and cached[1] == day:
            return cached[2]
        lines = budget_lines(key, self._access)
        self._lines[key.id] = (key, day, lines)
        return lines

    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        key: KeyRecord | None = ctx.extra.get("key")
        lines = self.lines(key) if key is not None else []
        if not lines:
            return await next(ctx, call)
        rates: Rates = ctx.target.rates
        max_tokens = call.max_tokens
        if max_tokens is None:
            max_tokens = self._access.budget_max_tokens
            call.body["max_tokens"] = max_tokens
        reserved = rates.nanos(estimate_prompt_tokens(call), max_tokens)
        if reserved == 0:  # a free deployment spends nothing
            return await next(ctx, call)
        try:
            full, used = await self._counters.reserve(lines, reserved)
        except CountersUnavailable as exc:
            self._guard.unavailable(exc)
            return await next(ctx, call)
        if full is not None:
            raise _exceeded(lines[full], used, reserved)
        try:
            answer = await next(ctx, call)
        except BaseException:
            # Nothing was served by this attempt: give it all back now (routing may try another).
            self._counters.settle(lines, -reserved)
            raise
        ctx.defer(lambda c: self._counters.settle(lines, self._actual(c, rates, reserved) - reserved))
        return answer

    @staticmethod
    def _actual(ctx: RequestContext, rates: Rates, reserved: int) -> int:
        # A stream cut short before the backend reported usage is charged the reservation: the
        # tokens may well have been generated, and the reservation is the bound we promised.
        cost = reserved if ctx.usage is None else rates.usage_nanos(ctx.usage)
        ctx.extra["cost_nanos"] = cost
        return cost


def _exceeded(line: BudgetLine, used: int, needed: int) -> BudgetExceeded:
    budget = line.budget
    period = {"day": "today (UTC)", "month": "this month (UTC)", "total": "in total"}[budget.period]
    message = (
        f"The {line.scope} budget of ${budget.amount:.2f} {period} is spent: ${used / NANOS_PER_DOLLAR:.6f} used "
        f"or reserved, and this request may cost up to ${needed / NANOS_PER_DOLLAR:.6f}. "
        "Lower max_tokens, wait for the next period, or ask your admin to raise the budget."
    )
    return BudgetExceeded(message)
