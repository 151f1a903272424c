"""The release policy: send each caller to their version of a released model, and copy some traffic
to a shadow candidate.

Sits after the cache and before retries and routing: the version's model is what the rest of the
list sees (``call.body['model']`` and so ``ctx.model``, every metric's ``model`` label and the log
line), and ``ctx.release`` names the release and version for the log. A shadow copy is a task of
its own that re-enters the rest of the list for the candidate model, not streamed; the primary
neither waits for it nor sees its failure, and past ``max_concurrent`` copies in flight a copy is
skipped, never queued.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass

from tokenway.api.openai import run_finalizers
from tokenway.config import GatewayConfig
from tokenway.context import ReleaseTag, RequestContext
from tokenway.errors import GatewayError
from tokenway.policies.base import Handler
from tokenway.providers.base import Answer, Call, Stream
from tokenway.releases.options import ReleaseConfig, ShadowConfig, StickyBy
from tokenway.releases.record import ReleaseRecord, Side
from tokenway.releases.split import Split, point


@dataclass(frozen=True, slots=True)
class _Release:
    name: str
    split: Split
    sticky_by: tuple[StickyBy, ...]
    shadow: ShadowConfig | None


def caller_identity(ctx: RequestContext, call: Call, sticky_by: tuple[StickyBy, ...]) -> str | None:
    """Who is calling, by the first source in ``sticky_by`` that the request has; None if it has none."""
    for source in sticky_by:
        if source == "user":
            user = call.body.get("user")
            if isinstance(user, str) and user:
                return "user:" + user
        elif source == "key":
            if ctx.key is not None:
                return "key:" + ctx.key.id
            if ctx.api_key:  # the master key, or an open gateway's caller that sent one
                return "key:" + hashlib.sha256(ctx.api_key.encode()).hexdigest()[:16]
        elif ctx.session:
            return "session:" + ctx.session
    return None


class ReleaseSplit:
    """The policy: one released model's split (and shadow) per configured ``release:`` block."""

    def __init__(self, config: GatewayConfig, record: ReleaseRecord) -> None:
        self._releases = {m.name: _release(m.name, m.release) for m in config.models if m.release is not None}
        self._record = record

    @staticmethod
    def wanted(config: GatewayConfig) -> bool:
        return any(model.release is not None for model in config.models)

    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        release = self._releases.get(call.body["model"])
        if release is None:
            return await next(ctx, call)
        version = release.split.pick(caller_identity(ctx, call, release.sticky_by))
        ctx.release = ReleaseTag(release.name, version.name)
        if version.model != release.name:
            call = Call(call.kind, {**call.body, "model": version.model}, call.prompt_estimate)
        side = self._record.side(release.name, version.name, "primary", version.model)
        started = time.perf_counter()
        ctx.defer(lambda ctx: _settle(side, ctx, started))
        shadow = release.shadow
        if shadow is not None and point("shadow:" + release.name, ctx.request_id) * 100 < shadow.percent:
            self._send_shadow(release.name, version.name, shadow, ctx, call, next)
        return await next(ctx, call)

    def _send_shadow(self, released: str, version: str, shadow: ShadowConfig, ctx: RequestContext, call: Call,
                     next: Handler) -> None:
        tasks = self._record.shadows
        if len(tasks) >= shadow.max_concurrent:
            self._record.skipped[released] = self._record.skipped.get(released, 0) + 1
            return
        body = {k: v for k, v in call.body.items() if k not in ("stream", "stream_options")}
        copy = Call(call.kind, {**body, "model": shadow.model}, call.prompt_estimate)
        shadow_ctx = RequestContext(request_id=ctx.request_id + ".shadow", endpoint=ctx.endpoint,
                                    priority=min(ctx.priority, 0) - 1, key=ctx.key, key_alias=ctx.key_alias)
        side = self._record.side(released, version, "shadow", shadow.model)
        task = asyncio.get_running_loop().create_task(_shadow(side, shadow_ctx, copy, next))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def _release(name: str, config: ReleaseConfig) -> _Release:
    return _Release(name, Split.of(name, config.versions), tuple(config.sticky_by), config.shadow)


def _settle(side: Side, ctx: RequestContext, started: float) -> None:
    target = ctx.target
    cost = target.rates.usage_nanos(ctx.usage) if target is not None else 0
    side.add(time.perf_counter() - started, ctx.usage, cost, ctx.status >= 400 or ctx.failed_mid_stream)


async def _shadow(side: Side, ctx: RequestContext, call: Call, next: Handler) -> None:
    started = time.perf_counter()
    failed = False
    try:
        answer = await next(ctx, call)
        if isinstance(answer, Stream):  # not asked for; read to the end all the same, for its usage
            try:
                async for _ in answer:
                    pass
            finally:
                await answer.aclose()
        ctx.usage = answer.usage
    except GatewayError as error:
        failed, ctx.status, ctx.error_type = True, error.status, type(error).__name__
    except Exception as exc:  # a shadow's bug is recorded as its failure, never raised into the loop
        failed, ctx.status, ctx.error_type = True, 500, type(exc).__name__
    finally:
        await run_finalizers(ctx)
    target = ctx.target
    side.add(time.perf_counter() - started, ctx.usage,
             target.rates.usage_nanos(ctx.usage) if target is not None else 0, failed)
