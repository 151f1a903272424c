"""Rate limits (requests and tokens per minute) and concurrency per key, team, client IP and model.

Every bucket a request touches is checked and taken in one atomic operation (a Lua script on
Redis, one uninterrupted call in memory), so concurrent requests on any number of replicas
cannot slip past a limit. Tokens per minute: the prompt is estimated (characters / 4) and
taken at admission; the real prompt and completion tokens are settled when the request ends.
Answers carry OpenAI's ``x-ratelimit-*`` headers for the tightest bucket of each kind. The
budget's admission reservation (``Budgets.reservation``) is taken in the same store call, so a
budgeted request costs one round trip to Redis, not two.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING

from tokenway.context import RequestContext
from tokenway.errors import Overloaded, RateLimited
from tokenway.observability.logging import JsonLog
from tokenway.policies.base import Handler
from tokenway.providers.base import Answer, Call
from tokenway.stores.base import Admission, Bucket, Counters, CountersUnavailable, KeyRecord, Slot
from tokenway.usage.cost import estimate_prompt_tokens
from tokenway.usage.options import AccessConfig

if TYPE_CHECKING:  # budget.py imports StoreGuard from here
    from tokenway.policies.budget import Budgets


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


class RateLimits:
    def __init__(self, counters: Counters, access: AccessConfig, guard: StoreGuard, budgets: Budgets) -> None:
        self._counters = counters
        self._access = access
        self._guard = guard
        self._budgets = budgets  # their admission reservation is taken in the same store call
        self._plans: dict[str, tuple[KeyRecord, list[Bucket]]] = {}

    def buckets(self, ctx: RequestContext, call: Call, prompt_tokens: int) -> list[Bucket]:
        out: list[Bucket] = []
        key: KeyRecord | None = ctx.extra.get("key")
        if key is not None:
            for bucket in self._key_plan(key):  # requests cost 1; tokens cost this request's prompt
                out.append(bucket if bucket.kind == "requests" else
                           Bucket(bucket.key, bucket.capacity, prompt_tokens, "tokens", bucket.scope))
        elif ctx.key_alias is None and ctx.client_ip:  # anonymous: the caller is its address
            anonymous = self._access.anonymous
            _add(out, "ip", ctx.client_ip, anonymous.rpm, anonymous.tpm, prompt_tokens)
        model = call.body.get("model") or ""
        limit = self._access.models.get(model)
        if limit is not None:
            _add(out, "model", model, limit.rpm, limit.tpm, prompt_tokens)
        return out

    def _key_plan(self, key: KeyRecord) -> list[Bucket]:
        """The key's and its team's buckets, built once per key record (a changed key is a new record)."""
        cached = self._plans.get(key.id)
        if cached is not None and cached[0] is key:
            return cached[1]
        plan: list[Bucket] = []
        _add(plan, "key", key.id, key.rpm, key.tpm, 0)
        team = self._access.teams.get(key.team or "")
        if team is not None:
            _add(plan, "team", key.team or "", team.rpm, team.tpm, 0)
        self._plans[key.id] = (key, plan)
        return plan

    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        prompt_tokens = estimate_prompt_tokens(call)
        buckets = self.buckets(ctx, call, prompt_tokens)
        key: KeyRecord | None = ctx.extra.get("key")
        slot = None
        if key is not None and key.max_parallel:
            slot = Slot(f"conc:key:{key.id}", key.max_parallel, ctx.request_id + secrets.token_hex(4))
        reservation = self._budgets.reservation(ctx, call)
        if not buckets and slot is None and reservation is None:
            return await next(ctx, call)
        for bucket in buckets:
            if bucket.cost > bucket.capacity:  # waiting would never help: say so instead of "retry later"
                raise RateLimited(
                    f"This request needs about {bucket.cost} tokens, more than the {bucket.scope}'s limit of "
                    f"{bucket.capacity} tokens per minute; send a shorter prompt.", code="tokens_exceeded",
                )
        try:
            admission = await self._counters.acquire(buckets, slot, reservation)
        except CountersUnavailable as exc:
            self._guard.unavailable(exc)
            return await next(ctx, call)
        headers = _headers(buckets, admission)
        if admission.denied is not None:
            raise _denied(buckets, admission, headers)
        ctx.response_headers.extend(headers)
        if admission.held:
            assert reservation is not None
            self._budgets.held(ctx, reservation)
        ctx.defer(lambda c: self._settle(c, buckets, prompt_tokens, slot))
        return await next(ctx, call)

    def _settle(self, ctx: RequestContext, buckets: list[Bucket], estimate: int, slot: Slot | None) -> None:
        usage = ctx.usage
        delta = usage.prompt_tokens + usage.completion_tokens - estimate if usage is not None else 0
        adjustments = [(bucket, delta) for bucket in buckets if bucket.kind == "tokens"] if delta else []
        if adjustments or slot is not None:
            self._counters.finish(slot, adjustments)


def _add(out: list[Bucket], scope: str, name: str, rpm: int | None, tpm: int | None, prompt_tokens: int) -> None:
    if rpm:
        out.append(Bucket("rpm:" + scope + ":" + name, rpm, 1, "requests", scope))
    if tpm:
        out.append(Bucket("tpm:" + scope + ":" + name, tpm, prompt_tokens, "tokens", scope))


def _duration(seconds: float) -> bytes:
    """OpenAI's reset format: ``120ms``, ``17s``, ``6m0s`` (bytes: it is mostly a header value)."""
    if seconds < 0.9995:
        return b"%dms" % (seconds * 1000 + 0.5) if seconds > 0 else b"0ms"
    whole = int(seconds + 0.5)
    return b"%ds" % whole if whole < 60 else b"%dm%ds" % divmod(whole, 60)


_HEADER_NAMES = {
    kind: (f"x-ratelimit-limit-{kind}".encode(), f"x-ratelimit-remaining-{kind}".encode(),
           f"x-ratelimit-reset-{kind}".encode())
    for kind in ("requests", "tokens")
}


def _headers(buckets: list[Bucket], admission: Admission) -> list[tuple[bytes, bytes]]:
    """OpenAI's headers for the tightest bucket (least left, as a share of its capacity) of each kind."""
    levels = admission.levels
    tightest: dict[str, int] = {}
    for i, bucket in enumerate(buckets):
        j = tightest.get(bucket.kind)
        if j is None or levels[i] * buckets[j].capacity < levels[j] * bucket.capacity:
            tightest[bucket.kind] = i
    out: list[tuple[bytes, bytes]] = []
    for kind, i in tightest.items():
        limit, left, reset = _HEADER_NAMES[kind]
        capacity, level = buckets[i].capacity, levels[i]
        out += ((limit, b"%d" % capacity), (left, b"%d" % level if level > 0 else b"0"),
                (reset, _duration((capacity - level) * 60.0 / capacity)))  # refills at capacity/min
    return out


def _denied(buckets: list[Bucket], admission: Admission, headers: list[tuple[bytes, bytes]]) -> RateLimited:
    extra = {k.decode(): v.decode() for k, v in headers}
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
