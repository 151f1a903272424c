"""The exact response cache end to end: real server, fake upstream counting the calls it gets."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import openai
import pytest

from tests.fakes import WORDS, FakeUpstream
from tests.servers import running_gateway
from tests.test_gateway_openai import client, config

TEXT = "".join(WORDS)
URL = "/v1/chat/completions"


def ask(content: str | None = None, **fields: Any) -> dict[str, Any]:
    """A deterministic chat call with a question unique to the test (Redis outlives test runs)."""
    question = content or f"What is {uuid.uuid4().hex}?"
    return {"model": "m", "messages": [{"role": "user", "content": question}], "temperature": 0, **fields}


def post(base: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    # The same key as the SDK client in ``client()``: the key is part of the cache scope.
    return httpx.post(base + URL, json=body, headers={"authorization": "Bearer unused", **headers}, timeout=10)


def sse_payloads(body: bytes) -> list[Any]:
    lines = [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def streamed_text(chunks: list[Any]) -> str:
    return "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])


def test_a_repeated_deterministic_call_is_a_hit(upstream: FakeUpstream) -> None:
    body = ask()
    with running_gateway(config(upstream)) as base:
        first, second = post(base, body), post(base, body)
    assert first.headers["x-cache"] == "miss" and second.headers["x-cache"] == "hit"
    assert second.headers["x-cache-match"] == "exact"
    assert second.json() == first.json()
    assert len(upstream.seen) == 1


def test_sampling_calls_and_cache_control_bypass(upstream: FakeUpstream) -> None:
    sampled = {**ask(), "temperature": 0.7}
    body = ask()
    with running_gateway(config(upstream)) as base:
        assert [post(base, sampled).headers["x-cache"] for _ in range(2)] == ["bypass", "bypass"]
        assert len(upstream.seen) == 2
        assert post(base, body, **{"cache-control": "no-store"}).headers["x-cache"] == "bypass"
        assert post(base, body).headers["x-cache"] == "miss"  # no-store left nothing behind
        assert post(base, body, **{"cache-control": "no-cache"}).headers["x-cache"] == "bypass"
        assert len(upstream.seen) == 5  # no-cache went to the backend despite the entry
        assert post(base, body).headers["x-cache"] == "hit"
        seeded = {**ask(), "temperature": 1.0, "seed": 7}
        assert [post(base, seeded).headers["x-cache"] for _ in range(2)] == ["miss", "hit"]


def test_model_opt_out(upstream: FakeUpstream) -> None:
    yaml = config(upstream).replace("  - name: m\n", "  - name: m\n    cache: {enabled: false}\n")
    body = ask()
    with running_gateway(yaml) as base:
        responses = [post(base, body) for _ in range(2)]
    assert all("x-cache" not in r.headers or r.headers["x-cache"] == "bypass" for r in responses)
    assert len(upstream.seen) == 2


def test_tenants_and_system_prompts_never_share_entries(upstream: FakeUpstream) -> None:
    body = ask()
    with running_gateway(config(upstream)) as base:
        assert post(base, body, authorization="Bearer key-a").headers["x-cache"] == "miss"
        assert post(base, body, authorization="Bearer key-b").headers["x-cache"] == "miss"
        assert post(base, body, authorization="Bearer key-a").headers["x-cache"] == "hit"
        with_system = {**body, "messages": [{"role": "system", "content": "Be terse."}, *body["messages"]]}
        assert post(base, with_system, authorization="Bearer key-a").headers["x-cache"] == "miss"
        other_params = {**body, "max_tokens": 5}
        assert post(base, other_params, authorization="Bearer key-a").headers["x-cache"] == "miss"
        assert post(base, {**body, "user": "someone"}, authorization="Bearer key-a").headers["x-cache"] == "hit"
    assert len(upstream.seen) == 4


def test_a_non_streamed_answer_serves_a_stream_and_back(upstream: FakeUpstream) -> None:
    with running_gateway(config(upstream)) as base:
        plain = ask()
        whole = post(base, plain).json()
        r = post(base, {**plain, "stream": True, "stream_options": {"include_usage": True}})
        assert r.headers["x-cache"] == "hit" and r.headers["content-type"].startswith("text/event-stream")
        chunks = sse_payloads(r.content)
        assert streamed_text(chunks) == whole["choices"][0]["message"]["content"] == TEXT
        assert all(c["object"] == "chat.completion.chunk" and c["id"] == whole["id"] for c in chunks)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]

        streamed = ask()
        live = post(base, {**streamed, "stream": True})
        assert live.headers["x-cache"] == "miss"
        live_chunks = sse_payloads(live.content)
        again = post(base, {**streamed, "stream": True})
        assert again.headers["x-cache"] == "hit"
        assert streamed_text(sse_payloads(again.content)) == streamed_text(live_chunks) == TEXT
        assert b'"usage"' not in again.content  # the client did not ask for it
        as_json = post(base, streamed)
        assert as_json.headers["x-cache"] == "hit"
        message = as_json.json()["choices"][0]
        assert message["message"] == {"role": "assistant", "content": TEXT} and message["finish_reason"] == "stop"
        assert as_json.json()["usage"]["completion_tokens"] == len(WORDS)  # recorded from the upstream's usage
        # The official SDK reads a replayed stream like a live one.
        sdk = client(base).chat.completions.create(stream=True, **streamed)
        assert "".join(c.choices[0].delta.content or "" for c in sdk if c.choices) == TEXT
    assert len(upstream.seen) == 2, [s.body for s in upstream.seen]


def test_identical_concurrent_streams_share_one_upstream_call(upstream: FakeUpstream) -> None:
    import concurrent.futures

    upstream.first_delay = 0.5
    body = {**ask(), "stream": True}
    with running_gateway(config(upstream, "slowfirst")) as base:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda _: post(base, body), range(8)))
    assert len(upstream.seen) == 1
    assert all(streamed_text(sse_payloads(r.content)) == TEXT for r in responses)
    assert sorted(r.headers["x-cache"] for r in responses) == ["hit"] * 7 + ["miss"]
    assert sum(r.headers.get("x-cache-match") == "coalesced" for r in responses) == 7


def test_entries_expire(upstream: FakeUpstream) -> None:
    yaml = config(upstream).replace("  - name: m\n", "  - name: m\n    cache: {ttl_s: 0.3}\n")
    body = ask()
    with running_gateway(yaml) as base:
        assert post(base, body).headers["x-cache"] == "miss"
        assert post(base, body).headers["x-cache"] == "hit"
        time.sleep(0.4)
        assert post(base, body).headers["x-cache"] == "miss"
    assert len(upstream.seen) == 2


def test_errors_and_broken_streams_are_never_cached(upstream: FakeUpstream) -> None:
    body = ask()
    with running_gateway(config(upstream, "status400")) as base:
        assert [post(base, body).status_code for _ in range(2)] == [400, 400]
    assert len(upstream.seen) == 2
    with running_gateway(config(upstream, "reset")) as base:
        for _ in range(2):
            with pytest.raises(openai.APIError):
                list(client(base).chat.completions.create(stream=True, **body))
    assert len(upstream.seen) == 4


def test_replicas_share_entries_through_redis(upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENWAY_REDIS_URL", "redis://127.0.0.1:6379/0")
    body = ask()
    with running_gateway(config(upstream)) as one, running_gateway(config(upstream)) as two:
        assert post(one, body).headers["x-cache"] == "miss"
        r = post(two, {**body, "stream": True})
        assert r.headers["x-cache"] == "hit" and streamed_text(sse_payloads(r.content)) == TEXT
    assert len(upstream.seen) == 1


def test_a_dead_redis_degrades_to_misses(upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENWAY_REDIS_URL", "redis://127.0.0.1:1/0")
    body = ask()
    with running_gateway(config(upstream)) as base:
        responses = [post(base, body) for _ in range(2)]
    assert [r.status_code for r in responses] == [200, 200]
    assert [r.headers["x-cache"] for r in responses] == ["miss", "miss"]
    assert responses[1].json()["choices"][0]["message"]["content"] == TEXT
