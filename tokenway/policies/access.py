"""Access: who is calling, whether they may now, and what they pay. One policy, three steps.

1. **Keys.** The master key, a virtual key from the key table (``KeyCache``), or, without a
   master key, anonymous callers. A virtual key's model allow-list is checked here (and by
   resilience for every fallback).
2. **Limits and the budget hold**, in one atomic step of the counter store: one request from every
   requests-per-minute bucket (the key's, its team's, the client address's for anonymous callers,
   the model's), the estimated prompt tokens from every tokens-per-minute bucket, a place in the
   key's concurrency slot, and the request's worst case in money on the key's and the team's
   budget lines. The worst case is the prompt estimate plus ``max_tokens`` (a budgeted request
   without one is given ``access.budget_max_tokens``) at the dearest rates of every deployment that
   may serve it, fallbacks included, so no attempt can cost more than was held. A stream first
   takes a place among its key's streams in flight (a concurrency slot of its own, holding
   ``limits.max_streams_per_key`` or the key's ``max_streams``), kept until the stream ends.
3. **Settle and record**, when the response is over, whatever happened: tokens and money move to
   the real usage, and the ledger gets one row. A stream cut short (client hang-up, upstream error,
   timeout) before the backend reported usage is billed for its prompt estimate and the tokens
   delivered, and marked partial.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tokenway.config import ModelConfig
from tokenway.context import RequestContext
from tokenway.errors import AuthenticationFailed, BudgetExceeded, Overloaded, PermissionDenied, RateLimited
from tokenway.ids import IdGenerator
from tokenway.keys import KeyCache
from tokenway.observability.logging import JsonLog
from tokenway.policies.base import Handler
from tokenway.protocol import Usage
from tokenway.providers.base import Answer, Call
from tokenway.stores.base import NANOS_PER_DOLLAR, KeyRecord, UsageRecord
from tokenway.stores.counters import Ask, Bucket, BudgetLine, Counters, CountersUnavailable, Decision
from tokenway.usage.cost import Rates, deployment_price, estimate_prompt_tokens
from tokenway.usage.ledger import Ledger
from tokenway.usage.options import AccessConfig


def budget_lines(key: KeyRecord, access: AccessConfig, now: float | None = None) -> list[BudgetLine]:
    """The budget counters a key's requests reserve on: its own and its team's, for the current period."""
    owners = [("key", key.id, key.budget)]
    team = access.teams.get(key.team or "")
    if team is not None:
        owners.append(("team", key.team or "", team.budget))
    return [BudgetLine(f"budget:{scope}:{name}:{budget.label(now)}", budget.nanos, budget.ttl_s(), scope, budget)
            for scope, name, budget in owners if budget is not None]


MAX_PLANS = 4096  # plans kept; past that the table starts over


@dataclass(slots=True)
class _Plan:
    """What one caller's requests for one model take from the counters, worked out once."""

    key: KeyRecord | None  # the key record it was made for: a changed key is a new record
    day: int  # the UTC day it was made on
    buckets: list[Bucket] = field(default_factory=list)
    tightest: Bucket | None = None  # the tokens bucket with the least capacity
    slot: tuple[str, int] | None = None  # the key's concurrency slot and its limit
    lines: list[BudgetLine] = field(default_factory=list)
    # The dearest rates of every deployment that may serve the request (fallbacks included).
    rates: Rates = field(default_factory=lambda: Rates(0, 0))


class AccessPolicy:
    def __init__(
        self, master_key: str | None, keys: KeyCache, counters: Counters, ledger: Ledger, access: AccessConfig,
        models: list[ModelConfig], log: JsonLog, clock: Callable[[], float] = time.time,
        max_streams: int | None = None, tiers: dict[str, list[str]] | None = None,
    ) -> None:
        self._master = master_key.encode() if master_key else None
        self._max_streams = max_streams  # per virtual key, unless the key sets its own
        self._keys = keys
        self._counters = counters
        self._ledger = ledger
        self._access = access
        self._fail_open = access.on_store_down == "open"
        self._log = log
        self._clock = clock
        self._new_id = IdGenerator("u_")
        self._store_down_logged = 0.0
        # Routers' public names and the models their tiers use: a key allowed the name may be served by
        # any of them, and the hold covers the dearest (tokenway/tiers/policy.py).
        self._tiers = tiers or {}
        self.use_models(models)

    def use_models(self, models: list[ModelConfig]) -> None:
        """The models (and so the prices) budgets are held at: the serving config's, again after a reload,
        so a model the reload added is held at its own price, not at nothing."""
        self._models = {m.name: m for m in models}
        self._rates = {m.name: Rates.dearest([Rates.of(deployment_price(d)) for d in m.deployments]) for m in models}
        self._plans: dict[tuple[str, str], _Plan] = {}  # (key id, "ip:<address>" or ""; model) -> plan

    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        model = call.body.get("model") or ""
        key = self.authenticate(ctx, model)
        if model in self._models or model in self._tiers:  # a refusal is still logged and recorded under it
            ctx.model = model
        ask = Ask([], estimate_prompt_tokens(call))
        ctx.defer(lambda done: self._record(done, ask.tokens))  # every request past the keys, refused ones too
        if call.stream and key is not None:
            streams = key.max_streams or self._max_streams
            if streams:
                await self._hold_stream(ctx, key, streams)
        self._limit(ctx, key, call, model, ask)
        if ask.buckets or ask.lines or ask.slot:
            decision = await self._admit(ask)
            if decision is not None:
                headers = rate_limit_headers(ask.buckets, decision.levels)
                _refuse(ask, decision, headers)
                ctx.response_headers += headers
                ctx.defer(lambda done: self._settle(done, ask))
        return await next(ctx, call)

    async def hold_more(self, ctx: RequestContext, call: Call) -> bool:
        """Hold the worst case of one more upstream call of ``call`` on the caller's budget lines (a
        structured-output retry, whose prompt has grown), given back when the request is over, when
        the request's own settle bills what every call cost. False when the budget cannot hold it."""
        key = ctx.key
        if key is None:
            return True
        plan = self._plan(key, None, call.body.get("model") or "")
        tokens = estimate_prompt_tokens(call)
        extra = Ask([], tokens, plan.lines, plan.rates.nanos(tokens, call.max_tokens or self._access.budget_max_tokens))
        if not extra.lines or not extra.amount:
            return True
        decision = await self._admit(extra)
        if decision is None:  # the store is down and the gateway serves without budgets
            return True
        if not decision.admitted:
            return False
        ctx.defer(lambda _: self._counters.settle(extra, 0, -extra.amount))
        return True

    def authenticate(self, ctx: RequestContext, model: str | None) -> KeyRecord | None:
        """The caller's key (None for the master key and anonymous callers), or the error that refuses it.

        A job's request runs as the key that submitted the job, checked again now: a key revoked or
        expired since then, or whose allow-list changed, no longer runs its queued work. With no
        ``model`` (reading one's own jobs and files), the allow-list is not asked.
        """
        if ctx.job is not None:
            return self._job_owner(ctx, ctx.job.owner, model)
        presented = ctx.api_key
        if presented and self._master is not None and hmac.compare_digest(presented.encode(), self._master):
            ctx.key_alias = "master"
            return None
        key = self._keys.lookup(presented) if presented else None
        if key is None:
            if self._master is None:
                return None  # an open gateway: anonymous callers, limited per client address
            if not presented:
                raise AuthenticationFailed(
                    "No API key provided. Send it as 'Authorization: Bearer <key>' or an 'api-key' header.")
            raise AuthenticationFailed("Incorrect API key provided.")
        return self._admit_key(ctx, key, model)

    def _admit_key(self, ctx: RequestContext, key: KeyRecord, model: str | None) -> KeyRecord:
        if key.revoked:
            raise AuthenticationFailed(f"The API key {key.id} has been revoked; ask your admin for a new one.")
        if key.expired(self._clock()):
            raise AuthenticationFailed(f"The API key {key.id} has expired; ask your admin to extend or replace it.")
        if model is not None and not key.allows(model):
            raise PermissionDenied(
                f"The API key {key.id} may not use the model '{model}'. Allowed: {', '.join(key.models)}.",
                param="model", code="model_not_allowed",
            )
        ctx.key, ctx.key_alias = key, key.name or key.id
        return key

    def _job_owner(self, ctx: RequestContext, owner: str, model: str | None) -> KeyRecord | None:
        if owner in ("master", "anonymous"):
            ctx.key_alias = "master" if owner == "master" else None
            return None
        key = self._keys.by_id(owner)
        if key is None:
            raise AuthenticationFailed(f"The API key {owner} that submitted this job no longer exists.")
        return self._admit_key(ctx, key, model)

    async def _hold_stream(self, ctx: RequestContext, key: KeyRecord, limit: int) -> None:
        """A place among the key's streams in flight, or a 429. The place is given back when the request
        ends, however it ends (done, upstream error, client hang-up): the settle is a finalizer."""
        ask = Ask([], 0, slot=f"streams:key:{key.id}", slot_limit=limit, member=ctx.request_id + secrets.token_hex(4))
        decision = await self._admit(ask)
        if decision is None:  # the store is down and the gateway serves without limits
            return
        if not decision.admitted:
            raise RateLimited(
                f"Too many streams in flight for the API key {key.id}: its limit is {limit} at once. Wait for one "
                "to finish, or ask without 'stream'.", retry_after=max(decision.retry_after, 1.0),
                code="too_many_streams")
        ctx.defer(lambda done: self._counters.settle(ask, 0, 0))

    def _limit(self, ctx: RequestContext, key: KeyRecord | None, call: Call, model: str, ask: Ask) -> None:
        """Fill in what this request takes from the counters: its plan's buckets, slot and budget hold."""
        anonymous = self._access.anonymous
        ip = ctx.client_ip if key is None and ctx.key_alias is None and (anonymous.rpm or anonymous.tpm) else None
        plan = self._plan(key, ip, model)
        ask.buckets = plan.buckets
        if plan.tightest is not None and ask.tokens > plan.tightest.capacity:  # waiting would never help
            raise RateLimited(
                f"This request needs about {ask.tokens} tokens, more than the {plan.tightest.scope}'s limit of "
                f"{plan.tightest.capacity} tokens per minute; send a shorter prompt.", code="tokens_exceeded")
        if plan.slot is not None:
            ask.slot, ask.slot_limit = plan.slot
            ask.member = ctx.request_id + secrets.token_hex(4)
        if plan.lines:
            max_tokens = call.max_tokens
            if max_tokens is None:  # the backend must stop where the hold does
                max_tokens = call.body["max_tokens"] = self._access.budget_max_tokens
            ask.amount = plan.rates.nanos(ask.tokens, max_tokens)
            ask.lines = plan.lines if ask.amount else []  # every deployment that may serve it is free

    def _plan(self, key: KeyRecord | None, ip: str | None, model: str) -> _Plan:
        """The plan for a key's (or a client address's) requests for a model, made again when the key
        changes or the UTC day turns (a budget line is a counter per period)."""
        day = int(self._clock() // 86400)
        name = key.id if key is not None else f"ip:{ip}" if ip else ""
        kept = self._plans.get((name, model))
        if kept is not None and kept.key is key and kept.day == day:
            return kept
        access = self._access
        plan = _Plan(key, day)
        if key is not None:
            _add(plan.buckets, "key", key.id, key.rpm, key.tpm)
            team = access.teams.get(key.team or "")
            if team is not None:
                _add(plan.buckets, "team", key.team or "", team.rpm, team.tpm)
            if key.max_parallel:
                plan.slot = (f"conc:key:{key.id}", key.max_parallel)
            plan.lines = budget_lines(key, access, self._clock())
            plan.rates = self._dearest(model, key)
        elif ip:
            _add(plan.buckets, "ip", ip, access.anonymous.rpm, access.anonymous.tpm)
        limit = access.models.get(model)
        if limit is not None:
            _add(plan.buckets, "model", model, limit.rpm, limit.tpm)
        plan.tightest = min((b for b in plan.buckets if b.kind == "tokens"), key=lambda b: b.capacity, default=None)
        if model in self._models or model in self._tiers:  # names the gateway does not serve are not kept
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            self._plans[(name, model)] = plan
        return plan

    def _dearest(self, model: str, key: KeyRecord) -> Rates:
        """Rates no cheaper than any deployment that may serve ``model`` for this key, fallbacks and a
        router's tiers included."""
        seen, chain = {model}, [model]
        for name in chain:
            config = self._models.get(name)
            fallbacks = [] if config is None else [*config.fallbacks, *config.context_fallbacks]
            reached = [*self._tiers.get(name, ()), *(f for f in fallbacks if key.allows(f))]
            for other in reached:
                if other not in seen:
                    seen.add(other)
                    chain.append(other)
        return Rates.dearest([self._rates[name] for name in chain if name in self._rates])

    async def _admit(self, ask: Ask) -> Decision | None:
        """The store's decision; None when the store is down and the gateway serves without limits."""
        try:
            return await self._counters.admit(ask)
        except CountersUnavailable as exc:
            self._counters.failures += 1
            now = time.monotonic()
            if now - self._store_down_logged >= 10.0:  # loudly, but not on every request
                self._store_down_logged = now
                self._log.event(
                    "limits_store_down", level="error", error=str(exc), failures=self._counters.failures,
                    mode="open: serving without rate limits or budgets" if self._fail_open else "closed: refusing",
                )
            if not self._fail_open:
                raise Overloaded("The rate-limit store is unavailable; retry shortly.", retry_after=1) from exc
            return None

    def _settle(self, ctx: RequestContext, ask: Ask) -> None:
        """The admitted request is over: move the counters to its real usage and cost."""
        usage, _, cost = self._bill(ctx, ask.tokens)
        tokens = 0 if usage is None else usage.prompt_tokens + usage.completion_tokens - ask.tokens
        self._counters.settle(ask, tokens, cost - ask.amount if ask.lines else 0)

    def _record(self, ctx: RequestContext, estimate: int) -> None:
        """The ledger row, written last (after the settle)."""
        usage, partial, cost = self._bill(ctx, estimate)
        key = ctx.key
        self._ledger.record(UsageRecord(
            id=self._new_id(), request_id=ctx.request_id, ts=self._clock(),
            key_id=key.id if key is not None else None, team=key.team if key is not None else None,
            model=ctx.model, deployment=ctx.deployment,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cached_tokens=usage.cached_tokens if usage else 0,
            cost_nanos=cost, latency_ms=round(ctx.elapsed_ms(), 3), status=ctx.status, partial=partial,
            job_id=ctx.job.id if ctx.job else None, batch_id=ctx.job.batch_id if ctx.job else None,
        ))

    @staticmethod
    def _bill(ctx: RequestContext, estimate: int) -> tuple[Usage | None, bool, int]:
        """What the request used, whether it was cut short, and what it costs at the rates of the
        deployment that answered (also noted on the context, for the log and the metrics)."""
        partial = ctx.stream and ctx.upstream_first_at is not None and ctx.status != 200
        if partial and ctx.usage is None:  # the backend generated (and charged for) what it sent
            ctx.usage = Usage(prompt_tokens=estimate, completion_tokens=ctx.delivered_tokens)
        if ctx.cost_nanos is None:  # with what calls the request made and dropped (a tier's escalation)
            answered = 0 if ctx.target is None else ctx.target.rates.usage_nanos(ctx.usage)
            ctx.cost_nanos = ctx.prior_cost_nanos + answered
        return ctx.usage, partial, ctx.cost_nanos


def _add(buckets: list[Bucket], scope: str, name: str, rpm: int | None, tpm: int | None) -> None:
    if rpm:
        buckets.append(Bucket(f"rpm:{scope}:{name}", rpm, "requests", scope))
    if tpm:
        buckets.append(Bucket(f"tpm:{scope}:{name}", tpm, "tokens", scope))


def rate_limit_headers(buckets: list[Bucket], levels: list[float]) -> list[tuple[bytes, bytes]]:
    """OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, each kind from its tightest
    bucket (the least left as a share of its capacity). A bucket refills at its capacity per minute."""
    tightest: dict[str, tuple[float, int]] = {}
    for bucket, level in zip(buckets, levels, strict=True):
        kept = tightest.get(bucket.kind)
        if kept is None or level * kept[1] < kept[0] * bucket.capacity:
            tightest[bucket.kind] = (level, bucket.capacity)
    headers = []
    for kind, (level, capacity) in tightest.items():
        limit, remaining, reset = _HEADER_NAMES[kind]
        headers += [(limit, b"%d" % capacity), (remaining, b"%d" % max(0, int(level))),
                    (reset, duration((capacity - level) * 60.0 / capacity).encode())]
    return headers


_HEADER_NAMES = {kind: tuple(f"x-ratelimit-{field}-{kind}".encode() for field in ("limit", "remaining", "reset"))
                 for kind in ("requests", "tokens")}


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``120ms``, ``17s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = round(seconds)
    return f"{whole}s" if whole < 60 else f"{whole // 60}m{whole % 60}s"


def _refuse(ask: Ask, decision: Decision, headers: list[tuple[bytes, bytes]]) -> None:
    """Raise the 429 that says which limit or budget refused the request, if one did."""
    if decision.denied is not None:
        retry = max(decision.retry_after, 0.001)
        if decision.denied == len(ask.buckets):
            message = "Too many requests in flight for this API key; wait for one to finish."
        else:
            bucket = ask.buckets[decision.denied]
            message = (f"Rate limit reached for the {bucket.scope}: {bucket.capacity} {bucket.kind} per minute. "
                       f"Retry in {duration(retry)}.")
        raise RateLimited(message, retry_after=retry, headers={k.decode(): v.decode() for k, v in headers})
    if decision.budget_full is not None:
        line = ask.lines[decision.budget_full]
        period = {"day": "today (UTC)", "month": "this month (UTC)", "total": "in total"}[line.budget.period]
        raise BudgetExceeded(
            f"The {line.scope} budget of ${line.budget.amount:.2f} {period} is spent: "
            f"${decision.committed / NANOS_PER_DOLLAR:.6f} used or reserved, and this request may cost up to "
            f"${ask.amount / NANOS_PER_DOLLAR:.6f}. Lower max_tokens, wait for the next period, or ask your "
            "admin to raise the budget.")
