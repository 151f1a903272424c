"""Rate limits (requests and tokens per minute) and concurrency per key, team, client IP and model.

Every bucket a request touches is checked and taken in one atomic operation (a Lua script on
Redis, one uninterrupted call in memory), so concurrent requests on any number of replicas
cannot slip past a limit. Tokens per minute: the prompt is estimated (characters / 4) and
taken at admission; the real prompt and completion tokens are settled when the request ends.
Answers carry OpenAI's ``x-ratelimit-*`` headers for the tightest bucket of each kind, rendered
as header lines that the gateway's own server puts in the response head unchecked. The
budget's admission reservation (``Budgets.hold``) is taken in the same store call, so a
budgeted request costs one round trip to Redis, not two. What a key's request for a model asks
of the store (its buckets, the header choice, the slot, the budget terms) is worked out once, in
a ``_Plan``, not on every request.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from tokenway.asgi import head_line_pairs  # interim, until the access rewrite
from tokenway.context import RequestContext
from tokenway.errors import Overloaded, RateLimited
from tokenway.observability.logging import JsonLog
from tokenway.policies.base import Handler
from tokenway.providers.base import Answer, Call
from tokenway.stores.base import (
    Admission,
    Bucket,
    CounterCells,
    Counters,
    CountersUnavailable,
    KeyRecord,
    Slot,
)
from tokenway.usage.cost import estimate_prompt_tokens
from tokenway.usage.options import AccessConfig

if TYPE_CHECKING:  # budget.py imports StoreGuard from here
    from tokenway.policies.budget import BudgetHold, Budgets, BudgetTerms


class StoreGuard:
    """What to do when the counter store is down: serve without limits, or refuse (503).

    Either way it is logged loudly, at most every 10 seconds, with how many requests it touched.
    """

    def __init__(self, fail_open: bool, log: JsonLog) -> None:
        self.fail_open = fail_open
        self._log = log
        self._last_logged = 0.0
        self.failures = 0

    def unavailable(self, exc: CountersUnavailable) -> None:
        """Called when the store failed; returns to serve unlimited or raises ``Overloaded``."""
        self.failures += 1
        now = time.monotonic()
        if now - self._last_logged >= 10.0:
            self._last_logged = now
            self._log.event(
                "limits_store_down", level="error", error=str(exc), failures=self.failures,
                mode="open: serving without rate limits or budgets" if self.fail_open else "closed: refusing requests",
            )
        if not self.fail_open:
            raise Overloaded("The rate-limit store is unavailable; retry shortly.", retry_after=1) from exc


MAX_PLANS = 16_384  # plans kept: ~2 KB each with key and team limits and a budget, ~35 MB at most


@dataclass(slots=True, init=False, eq=False)  # for its slots: mypyc (the deployment build) refuses __slots__
class _Plan:
    """What one kind of request asks of the counter store, worked out once: its buckets (the key's,
    its team's, the model's), which of them report in the headers, the concurrency slot, and the
    budget lines with the rates admission reserves at; and its handle on the counters (``cells``: the
    embedded store's state itself, or this process's lease on the shared one). A key's plan for a
    model is kept until the key changes or the UTC day ends (a new day or month starts new budget
    counters); a plan without a key (a client address's, a model's limits) is kept as long as there
    is room."""

    buckets: list[Bucket]
    token_buckets: list[Bucket]
    head_lines: Callable[[list[float]], bytes]  # levels -> the x-ratelimit-* header lines
    slot: tuple[str, int] | None  # (slot key, limit) when the key limits requests in flight
    budget: BudgetTerms | None
    until: float  # time.time() after which the plan is made again
    unlimited: bool  # nothing to ask of the store
    most_tokens: float  # the smallest tokens-per-minute capacity
    cells: CounterCells

    def __init__(
        self,
        counters: Counters,
        buckets: list[Bucket],
        slot: tuple[str, int] | None = None,
        budget: BudgetTerms | None = None,
        until: float = 0.0,
    ) -> None:
        self.buckets = buckets
        self.token_buckets = [b for b in buckets if b.kind == "tokens"]
        self.head_lines = _head_renderer(buckets)
        self.slot = slot
        self.budget = budget
        self.until = until
        self.unlimited = not (buckets or slot or budget)
        self.most_tokens = min((b.capacity for b in self.token_buckets), default=float("inf"))
        self.cells = counters.cells(buckets, slot, budget[0] if budget else ())

    def slot_for(self, member: str | None) -> Slot | None:
        """The request's place in the slot, for a shared store (``member``: None when no slot applies)."""
        return None if member is None or self.slot is None else Slot(self.slot[0], self.slot[1], member)


class RateLimits:
    def __init__(self, counters: Counters, access: AccessConfig, guard: StoreGuard, budgets: Budgets) -> None:
        self._counters = counters
        self._access = access
        self._guard = guard
        self._budgets = budgets  # their admission reservation is taken in the same store call
        # (key id, or "ip:<address>" / "" without a key; model) -> (the key record it was made for, plan)
        self._plans: dict[tuple[str, str], tuple[KeyRecord | None, _Plan]] = {}

    def _key_plan(self, key: KeyRecord, model: str) -> _Plan:
        now = time.time()
        cached = self._plans.get((key.id, model))
        if cached is not None and cached[0] is key and now < cached[1].until:
            return cached[1]
        buckets: list[Bucket] = []
        _add(buckets, "key", key.id, key.rpm, key.tpm)
        team = self._access.teams.get(key.team or "")
        if team is not None:
            _add(buckets, "team", key.team or "", team.rpm, team.tpm)
        self._add_model(buckets, model)
        plan = _Plan(
            self._counters,
            buckets,
            (f"conc:key:{key.id}", key.max_parallel) if key.max_parallel else None,
            self._budgets.terms(key, model),
            (now // 86400 + 1) * 86400,
        )
        self._keep(key.id, model, key, plan)
        return plan

    def _keyless_plan(self, ctx: RequestContext, model: str) -> _Plan:
        anonymous = self._access.anonymous
        # Anonymous: the caller is its address, and has a plan of its own only if addresses are limited.
        limited = ctx.key_alias is None and (anonymous.rpm or anonymous.tpm)
        ip = ctx.client_ip if limited else None
        name = "ip:" + ip if ip else ""
        cached = self._plans.get((name, model))
        if cached is not None:
            return cached[1]
        buckets: list[Bucket] = []
        if ip:
            _add(buckets, "ip", ip, anonymous.rpm, anonymous.tpm)
        self._add_model(buckets, model)
        plan = _Plan(self._counters, buckets, until=float("inf"))  # no budget: nothing turns over at midnight
        self._keep(name, model, None, plan)
        return plan

    def _keep(self, name: str, model: str, key: KeyRecord | None, plan: _Plan) -> None:
        if self._budgets.known(model):  # the model named by a client is kept only once it is known
            if len(self._plans) >= MAX_PLANS:  # bounded: keys x models can be large; a dropped plan is remade
                self._plans.clear()
            self._plans[(name, model)] = (key, plan)

    def _add_model(self, buckets: list[Bucket], model: str) -> None:
        limit = self._access.models.get(model)
        if limit is not None:
            _add(buckets, "model", model, limit.rpm, limit.tpm)

    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        key = ctx.key
        model = call.body.get("model") or ""
        plan = self._key_plan(key, model) if key is not None else self._keyless_plan(ctx, model)
        if plan.unlimited:  # the master key, or a key with no limits and no budget
            return await next(ctx, call)
        tokens = estimate_prompt_tokens(call)
        if tokens > plan.most_tokens:  # waiting would never help: say so instead of "retry later"
            raise _too_many_tokens(plan, tokens)
        hold = None if plan.budget is None else self._budgets.hold(plan.budget, call, tokens)
        if not plan.buckets and plan.slot is None and hold is None:  # a budget, but a free model
            return await next(ctx, call)
        member = None if plan.slot is None else ctx.request_id + secrets.token_hex(4)
        cells = plan.cells
        # In process first, with no store call: the embedded counters, or this process's share of the
        # shared ones. What they cannot decide (a refusal to explain, a share run out) the store does.
        levels = cells.take(tokens, time.monotonic(), member)
        if levels is not None:
            if hold is not None and cells.reserve(hold.amount) is not None:
                hold = None  # the budget looks spent at the dearest price: the attempt reserves at its own
        else:
            try:
                admission = await cells.acquire(tokens, plan.slot_for(member), hold)
            except CountersUnavailable as exc:
                self._guard.unavailable(exc)
                return await next(ctx, call)
            levels = admission.levels
            if admission.denied is not None:
                raise _denied(plan.buckets, admission, plan.head_lines(levels))
            if not admission.held:
                hold = None
        if levels:
            ctx.response_headers += head_line_pairs(plan.head_lines(levels))
        if hold is not None:
            ctx.budget_hold = hold
        ctx.defer(partial(self._settle, plan, tokens, member, hold))
        return await next(ctx, call)

    def _settle(
        self, plan: _Plan, estimate: int, member: str | None, hold: BudgetHold | None, ctx: RequestContext
    ) -> None:
        usage = ctx.usage
        delta = usage.prompt_tokens + usage.completion_tokens - estimate if usage is not None else 0
        money = 0
        try:
            if hold is not None:
                money = self._budgets.hold_settlement(ctx, hold)
        finally:  # one settle frees the slot, settles the tokens and the money; the slot and the tokens
            # are settled even if the cost could not be worked out (the hold then stays spent)
            plan.cells.settle(member, delta, money)


def _add(out: list[Bucket], scope: str, name: str, rpm: int | None, tpm: int | None) -> None:
    if rpm:
        out.append(Bucket("rpm:" + scope + ":" + name, rpm, "requests", scope))
    if tpm:
        out.append(Bucket("tpm:" + scope + ":" + name, tpm, "tokens", scope))


def _duration(seconds: float) -> bytes:
    """OpenAI's reset format: ``120ms``, ``17s``, ``6m0s`` (bytes: it is mostly a header value)."""
    if seconds < 0.9995:  # never below zero: a level is at most the capacity
        return b"%dms" % (seconds * 1000 + 0.5)
    whole = int(seconds + 0.5)
    return b"%ds" % whole if whole < 60 else b"%dm%ds" % divmod(whole, 60)


def _head_template(kind: str, limit: int | None = None) -> bytes:
    """OpenAI's three headers of one kind as lines to fill in: the limit (unless given), remaining, reset."""
    name = kind.encode()
    filled = b"%d" if limit is None else b"%d" % limit
    return b"x-ratelimit-limit-%s: %s\r\nx-ratelimit-remaining-%s: %%d\r\nx-ratelimit-reset-%s: %%s\r\n" % (
        name, filled, name, name)


def _head_renderer(buckets: list[Bucket]) -> Callable[[list[float]], bytes]:
    """What renders OpenAI's headers from the buckets' levels after a take, for the tightest bucket
    (least left, as a share of its capacity) of each kind, as header lines (the server sends them as
    they are). Made once per plan: with one bucket of each kind, the usual case, the limits are part
    of the template and the levels are read by fixed index."""
    # Per kind: the bucket that reports with its capacity, and the others of that kind that report
    # instead when they are tighter.
    reporting: list[tuple[int, int, list[tuple[int, int]]]] = []
    kinds = [kind for kind in ("requests", "tokens") if any(b.kind == kind for b in buckets)]
    for kind in kinds:
        first, *rivals = [(i, b.capacity) for i, b in enumerate(buckets) if b.kind == kind]
        reporting.append((first[0], first[1], rivals))
    if not reporting:
        return _no_head_lines
    if any(rivals for _, _, rivals in reporting):
        return partial(_tightest_head_lines, b"".join(_head_template(kind) for kind in kinds), reporting)
    head = b"".join(_head_template(kind, capacity) for kind, (_, capacity, _) in zip(kinds, reporting, strict=True))
    # Far from a limit a bucket is full again within a second: its reset is whole milliseconds.
    in_ms = head.replace(b"%s", b"%dms")
    if len(reporting) == 1:
        ((i, capacity, _),) = reporting
        per_unit = 60.0 / capacity  # seconds a unit takes to refill

        def one_kind(levels: list[float]) -> bytes:
            level = levels[i]
            reset = (capacity - level) * per_unit
            if reset < 0.9995:
                return in_ms % (level, reset * 1000 + 0.5)
            return head % (level if level > 0 else 0, _duration(reset))

        return one_kind
    (i, capacity_i, _), (j, capacity_j, _) = reporting
    per_i, per_j = 60.0 / capacity_i, 60.0 / capacity_j

    def both_kinds(levels: list[float]) -> bytes:
        first, second = levels[i], levels[j]
        reset_i, reset_j = (capacity_i - first) * per_i, (capacity_j - second) * per_j
        if reset_i < 0.9995 and reset_j < 0.9995:
            return in_ms % (first, reset_i * 1000 + 0.5, second, reset_j * 1000 + 0.5)
        return head % (first if first > 0 else 0, _duration(reset_i), second if second > 0 else 0, _duration(reset_j))

    return both_kinds


def _no_head_lines(levels: list[float]) -> bytes:
    return b""


def _tightest_head_lines(head: bytes, reporting: list[tuple[int, int, list[tuple[int, int]]]],
                         levels: list[float]) -> bytes:
    values: list[float | bytes] = []
    for i, capacity, rivals in reporting:
        level = levels[i]
        for j, other in rivals:
            if levels[j] * capacity < level * other:
                capacity, level = other, levels[j]
        values += (capacity, level if level > 0 else 0, _duration((capacity - level) * 60.0 / capacity))
    return head % tuple(values)  # refills at capacity/min


def _too_many_tokens(plan: _Plan, tokens: int) -> RateLimited:
    bucket = min(plan.token_buckets, key=lambda b: b.capacity)
    return RateLimited(
        f"This request needs about {tokens} tokens, more than the {bucket.scope}'s limit of "
        f"{bucket.capacity} tokens per minute; send a shorter prompt.", code="tokens_exceeded",
    )


def _denied(buckets: list[Bucket], admission: Admission, lines: bytes) -> RateLimited:
    extra = {k.decode(): v.decode() for k, v in head_line_pairs(lines)}
    index = admission.denied
    assert index is not None
    retry = max(admission.retry_after, 0.001)
    if index == len(buckets):
        message = "Too many requests in flight for this API key; wait for one to finish."
    else:
        bucket = buckets[index]
        per = "requests" if bucket.kind == "requests" else "tokens"
        message = (
            f"Rate limit reached for the {bucket.scope}: {bucket.capacity} {per} per minute. "
            f"Retry in {_duration(retry).decode()}."
        )
    return RateLimited(message, retry_after=retry, headers=extra)
