"""Budgets in money per key and team: reserve the worst case up front, settle to the real cost.

At admission, the request reserves ``(estimated prompt + max_tokens)`` tokens at the dearest
price among its model's deployments on every budget that applies, in the same atomic operation
that takes its rate limits (one Lua script on Redis, one uninterrupted call in memory):
concurrent requests on any number of replicas can never commit more than a budget holds, and
the request pays one store round trip, not two. Once routing has picked a deployment, the
attempt draws on that reservation; a fallback to a dearer model first tops it up. When
admission could not reserve (the budget looked spent at the dearest price), the attempt
reserves at its own deployment's price and is refused if that does not fit either. When the
request ends, whatever happened (success, upstream error, client hang-up, cache hit), the
reservation is settled to the real cost and the rest is given back. A budgeted request that
names no ``max_tokens`` is given ``access.budget_max_tokens``, so that the reservation really is
the worst case.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenway.config import ModelConfig
from tokenway.context import RequestContext
from tokenway.errors import BudgetExceeded
from tokenway.policies.base import Handler
from tokenway.policies.limits import StoreGuard
from tokenway.providers.base import Answer, Call
from tokenway.stores.base import (
    NANOS_PER_DOLLAR,
    Budget,
    BudgetLine,
    Counters,
    CountersUnavailable,
    KeyRecord,
)
from tokenway.usage.cost import Rates, deployment_price, estimate_prompt_tokens
from tokenway.usage.options import AccessConfig


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


# What admission reserves against for a key and a model: the key's and its team's budget lines, and
# the rates no cheaper than any of the model's deployments.
BudgetTerms = tuple[list[BudgetLine], Rates]


@dataclass(slots=True, eq=False)  # for its slots: mypyc (the deployment build) refuses __slots__
class BudgetHold:
    """What admission reserved for the whole request: ``amount`` on every line, the worst case at the
    model's dearest rates (a ``Reservation``, as the stores take it). The attempts draw on it; it is
    settled once, when the request ends."""

    lines: list[BudgetLine]
    amount: int
    dearest: Rates  # the rates ``amount`` was worked out at
    prompt_tokens: int
    max_tokens: int
    fills_max_tokens: bool  # the client named no max_tokens: the backend is sent the budget's
    rates: Rates | None = None  # the answering attempt's deployment's rates


class Budgets:
    def __init__(self, counters: Counters, access: AccessConfig, guard: StoreGuard, models: list[ModelConfig]) -> None:
        self._counters = counters
        self._access = access
        self._guard = guard
        self._max_tokens = access.budget_max_tokens  # read on every request: a plain attribute, not the model's
        # Per public model, rates no cheaper than any of its deployments: admission reserves at these
        # before routing has chosen one.
        self._dearest = {m.name: Rates.dearest([Rates.of(deployment_price(d)) for d in m.deployments]) for m in models}

    def known(self, model: str) -> bool:
        return model in self._dearest

    def terms(self, key: KeyRecord, model: str) -> BudgetTerms | None:
        """What admission reserves against (None: no budget applies, or routing will refuse the model)."""
        lines = budget_lines(key, self._access)
        rates = self._dearest.get(model)
        return (lines, rates) if lines and rates is not None else None

    def hold(self, terms: BudgetTerms, call: Call, prompt_tokens: int) -> BudgetHold | None:
        """What admission reserves for the whole request, with the rate limits in the same atomic step
        (one store call instead of two): the worst case at the model's dearest deployment. None: free."""
        lines, rates = terms
        max_tokens = call.max_tokens
        fills = max_tokens is None
        if max_tokens is None:
            max_tokens = self._max_tokens
        amount = rates.nanos(prompt_tokens, max_tokens)
        return BudgetHold(lines, amount, rates, prompt_tokens, max_tokens, fills) if amount else None

    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        hold: BudgetHold | None = ctx.budget_hold
        rates: Rates
        if hold is not None:  # admission reserved: this attempt draws on it
            if hold.fills_max_tokens:  # the backend must stop where the reservation does
                call.body["max_tokens"] = hold.max_tokens
            rates = ctx.target.rates
            dearest = hold.dearest
            if rates.per_input > dearest.per_input or rates.per_output > dearest.per_output:
                need = rates.nanos(hold.prompt_tokens, hold.max_tokens)  # a dearer fallback model: top it up
                if need > hold.amount and await self._reserve(hold.lines, need - hold.amount):
                    hold.amount = need
            answer = await next(ctx, call)  # a failed attempt keeps the hold for the next one
            hold.rates = rates
            return answer
        key = ctx.key
        lines = budget_lines(key, self._access) if key is not None else []
        if not lines:
            return await next(ctx, call)
        max_tokens = call.max_tokens
        if max_tokens is None:  # the backend must stop where the reservation does
            max_tokens = call.body["max_tokens"] = self._max_tokens
        rates = ctx.target.rates
        prompt_tokens = estimate_prompt_tokens(call)
        need = rates.nanos(prompt_tokens, max_tokens)  # this attempt's worst case
        if need == 0:  # a free deployment spends nothing
            return await next(ctx, call)
        # Admission reserved nothing (the budget looked spent at the dearest price, or the store was
        # down): reserve at this deployment's own price, and refuse if that does not fit either.
        if not await self._reserve(lines, need):
            return await next(ctx, call)
        try:
            answer = await next(ctx, call)
        except BaseException:
            # Nothing was served by this attempt: give it all back now (routing may try another).
            self._counters.settle(lines, -need)
            raise
        ctx.defer(lambda c: self._counters.settle(lines, self._actual(c, rates, prompt_tokens, max_tokens) - need))
        return answer

    async def _reserve(self, lines: list[BudgetLine], amount: int) -> bool:
        """Reserve ``amount`` on every line; False when the store is down and the guard serves anyway."""
        try:
            full, used = await self._counters.reserve(lines, amount)
        except CountersUnavailable as exc:
            self._guard.unavailable(exc)
            return False
        if full is not None:
            raise _exceeded(lines[full], used, amount)
        return True

    def hold_settlement(self, ctx: RequestContext, hold: BudgetHold) -> int:
        """The request is over: what its hold's lines move by (actual cost less the reservation). The
        caller hands it to the store with the request's other settles (``Counters.finish``). No attempt
        answered (or a cache hit): it is all given back."""
        rates = hold.rates
        if rates is None:
            return -hold.amount
        return self._actual(ctx, rates, hold.prompt_tokens, hold.max_tokens) - hold.amount

    @staticmethod
    def _actual(ctx: RequestContext, rates: Rates, prompt_tokens: int, max_tokens: int) -> int:
        # A stream cut short before the backend reported usage is charged the attempt's worst case: the
        # tokens may well have been generated, and that worst case is the bound we promised.
        usage = ctx.usage
        if usage is None:
            cost = rates.nanos(prompt_tokens, max_tokens)
        else:
            cost = rates.nanos(usage.prompt_tokens, usage.completion_tokens)
        ctx.cost_nanos = cost
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
