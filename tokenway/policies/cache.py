"""The response cache policy: exact hits, semantic hits, and single-flight misses.

Sits after auth and limits (a hit still counts against a key's rate, but costs nothing) and
before routing (a hit never takes a deployment's concurrency slot). Per call:

1. Not cacheable (model opted out, non-deterministic sampling, ``Cache-Control: no-store``):
   ``x-cache: bypass``, straight to the backend. ``no-cache`` skips the lookup but stores.
2. Exact lookup by ``keys.exact_key``: a hit is replayed in the shape asked for.
3. Semantic lookup (models that opt in): nearest verified neighbour in the same scope.
4. Miss: join the identical call already in flight, or start one; store it when it ends well.

Any cache failure (Redis down, a bad entry, the embedder) is a miss, never an error.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tokenway.cache.coalesce import Coalescer
from tokenway.cache.entry import Entry, Uncacheable, as_sse, assemble, replay
from tokenway.cache.exact import CacheStore, MemoryStore, RedisStore
from tokenway.cache.keys import exact_key, is_deterministic, last_user_text, semantic_scope, tenant_scope
from tokenway.cache.options import CacheConfig, ModelCacheConfig
from tokenway.config import GatewayConfig
from tokenway.context import CacheOutcome, RequestContext
from tokenway.policies.base import Handler
from tokenway.protocol import Usage
from tokenway.providers.base import Answer, Call, Completion, Stream

if TYPE_CHECKING:  # numpy and the model are imported only when a model opts in to semantic caching
    import numpy as np

    from tokenway.cache.semantic import Match, SemanticCache


async def open_cache(config: GatewayConfig, redis: Any) -> ResponseCache | None:
    """The cache policy for ``config``, or None when caching is off. Loads the embedder if needed.

    The embedder loads here, at startup, on a thread: a replica that says it is up has the
    same cache behaviour as its peers, and no request ever waits for a model to load.
    """
    settings = config.cache
    models = {m.name: m.cache for m in config.models}
    if not settings.enabled and not any(m.enabled for m in models.values()):
        return None
    if settings.backend == "redis" and redis is None:
        raise ValueError("cache.backend is 'redis' but no Redis is configured; set TOKENWAY_REDIS_URL.")
    shared = redis if settings.backend in ("auto", "redis") else None
    store: CacheStore = RedisStore(shared) if shared is not None else MemoryStore(settings.max_bytes)
    semantic = None
    if any(m.semantic for m in models.values()):
        from tokenway.cache.semantic import Embedder, SemanticCache

        embedder = await asyncio.to_thread(Embedder.load)
        semantic = SemanticCache(embedder, settings.semantic.max_entries, settings.semantic.verify, shared)
    return ResponseCache(settings, models, store, semantic)


@dataclass(slots=True, frozen=True)
class _Rules:
    """One model's effective cache settings (gateway defaults with the model's overrides)."""

    ttl_s: float
    deterministic_only: bool
    semantic: bool
    threshold: float


@dataclass(slots=True)
class _Lookup:
    key: str
    text: str | None = None  # the question, when the semantic cache takes part
    scope: str | None = None  # its semantic scope
    vector: np.ndarray | None = None  # its embedding, computed once for the lookup and reused to store


class ResponseCache:
    def __init__(
        self, config: CacheConfig, models: dict[str, ModelCacheConfig], store: CacheStore,
        semantic: SemanticCache | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._semantic = semantic
        self._flights = Coalescer()
        self.errors = 0  # cache failures absorbed as misses (for metrics)
        self.use_models(models)

    def use_models(self, models: dict[str, ModelCacheConfig]) -> None:
        """Each model's cache rules: at start, and again when a reload changes the models. The store and
        the embedder stay (semantic caching needs the embedder loaded at start)."""
        config, rules = self._config, {}
        for name, model in models.items():
            if not (config.enabled if model.enabled is None else model.enabled):
                continue
            only = model.deterministic_only
            rules[name] = _Rules(
                ttl_s=model.ttl_s or config.ttl_s,
                deterministic_only=config.deterministic_only if only is None else only,
                semantic=model.semantic and self._semantic is not None,
                threshold=model.threshold or config.semantic.threshold,
            )
        self._rules = rules

    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        body = call.body
        rules = self._rules.get(body.get("model"))  # type: ignore[arg-type]
        control = ctx.cache_control or ""
        # An embedding is a function of its input: always deterministic, whatever the sampling fields say.
        deterministic = call.kind == "embeddings" or is_deterministic(body)
        # A native Responses answer carries the backend's own response id and state: never one to hand out twice.
        if (rules is None or "no-store" in control or (rules.deterministic_only and not deterministic)
                or call.kind == "responses"):
            return await self._bypass(ctx, call, next)
        ctx.model = body["model"]
        scope = tenant_scope(ctx)
        lookup = _Lookup(exact_key(call.kind, body, scope))
        if rules.semantic:
            lookup.text = last_user_text(body)
            lookup.scope = semantic_scope(call.kind, body, scope)
            if lookup.text is not None and len(lookup.text) > self._config.semantic.max_chars:
                lookup.text = None
        if "no-cache" in control:
            # Fresh from the backend, but the answer still refreshes the cache.
            return await self._miss(ctx, call, next, lookup, rules, "bypass", shared=False)
        entry = await self._get(ctx, lookup.key)
        if entry is not None:
            return _hit(ctx, call, entry, "exact")
        if lookup.text is not None and lookup.scope is not None:
            match = await self._nearest(ctx, lookup, rules)
            if match is not None:
                entry = await self._get(ctx, match.key)
                if entry is not None:
                    return _hit(ctx, call, entry, match.how, match.similarity)
        return await self._miss(ctx, call, next, lookup, rules, "miss", shared=self._config.coalesce)

    async def _bypass(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        _mark(ctx, "bypass")
        return await next(ctx, call)

    async def _get(self, ctx: RequestContext, key: str) -> Entry | None:
        try:
            raw = await self._store.get(key)
            return Entry.decode(raw) if raw is not None else None
        except Exception as exc:
            self._failed(ctx, exc)
            return None

    async def _nearest(self, ctx: RequestContext, lookup: _Lookup, rules: _Rules) -> Match | None:
        assert self._semantic is not None and lookup.text is not None and lookup.scope is not None
        try:
            lookup.vector = await self._semantic.embed(lookup.text)
            return await self._semantic.search(lookup.scope, lookup.text, lookup.vector, rules.threshold)
        except Exception as exc:
            self._failed(ctx, exc)
            return None

    async def _miss(
        self, ctx: RequestContext, call: Call, next: Handler, lookup: _Lookup, rules: _Rules, status: str, shared: bool
    ) -> Answer:
        # Streams fan out as bytes, so only calls that want the same shape share a flight.
        shape = f":s{int(call.include_usage)}" if call.stream else ":n"
        flight_key = lookup.key + shape
        flight = self._flights.join(flight_key) if shared else None
        if flight is not None:
            _mark(ctx, "hit")
            ctx.response_headers.append((b"x-cache-match", b"coalesced"))
            assert ctx.cache is not None
            ctx.cache.match = "coalesced"
            return await self._flights.subscribe(flight, leader=False)
        _mark(ctx, status)

        async def store(answer: Answer, blocks: list[bytes]) -> None:
            try:
                body = assemble(call.kind, blocks, answer.usage) if isinstance(answer, Stream) else answer.body
            except Uncacheable:
                return
            try:
                raw = Entry(call.kind, body, answer.usage, lookup.text).encode()
                if len(raw) > self._config.max_entry_bytes:
                    return
                await self._store.set(lookup.key, raw, rules.ttl_s)
                if self._semantic is not None and lookup.scope is not None and lookup.text is not None:
                    if lookup.vector is None:
                        lookup.vector = await self._semantic.embed(lookup.text)
                    await self._semantic.add(lookup.scope, lookup.text, lookup.vector, lookup.key, rules.ttl_s)
            except Exception:
                self.errors += 1

        flight = self._flights.start(flight_key, lambda: next(ctx, call), store, shared=shared)
        return await self._flights.subscribe(flight, leader=True)

    def _failed(self, ctx: RequestContext, exc: Exception) -> None:
        self.errors += 1  # the request goes on as a miss; the count is exported

    async def aclose(self) -> None:
        await self._flights.aclose()
        if self._semantic is not None:
            with contextlib.suppress(Exception):
                await self._semantic.aclose()


def _mark(ctx: RequestContext, status: str) -> None:
    ctx.response_headers.append((b"x-cache", status.encode()))
    ctx.cache = CacheOutcome(status)


def _hit(ctx: RequestContext, call: Call, entry: Entry, how: str, similarity: float | None = None) -> Answer:
    """Serve ``entry`` in the shape the call asked for, at zero cost (the saving is recorded)."""
    _mark(ctx, "hit")
    ctx.response_headers.append((b"x-cache-match", how.encode()))
    ctx.cache = CacheOutcome("hit", how, None if similarity is None else round(similarity, 4))
    if similarity is not None:
        ctx.response_headers.append((b"x-cache-similarity", f"{similarity:.4f}".encode()))
    if not call.stream:
        return Completion(body=entry.body, usage=Usage())
    block = as_sse(entry, call.include_usage)
    stream = Stream(lambda _: replay(block))
    stream.usage = Usage()
    return stream
