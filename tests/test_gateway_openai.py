"""The front door, end to end: the official openai SDK against a real server and a fake upstream."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.fakes import WORDS, FakeUpstream
from tests.servers import running_gateway

TEXT = "".join(WORDS)


def config(upstream: FakeUpstream, scenario: str = "ok", extra: str = "", deployment: str = "") -> str:
    """One model ``m`` on the fake upstream's ``scenario``; ``deployment`` adds fields to it."""
    fields = "".join(f"        {line.strip()}\n" for line in deployment.splitlines() if line.strip())
    return f"""
models:
  - name: m
    deployments:
      - provider: openai
        api_base: {upstream.url(scenario)}
        model: upstream-name
{fields}{extra}
"""


def client(base: str, key: str = "unused", **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, **kw)  # type: ignore[arg-type]


MESSAGES = [{"role": "user", "content": "hi"}]


def test_chat_non_streaming_relays_the_upstream_answer(upstream: FakeUpstream) -> None:
    with running_gateway(config(upstream)) as base:
        raw = client(base).chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
        completion = raw.parse()
    assert completion.choices[0].message.content == TEXT
    assert completion.usage is not None and completion.usage.completion_tokens == len(WORDS)
    assert raw.headers["x-request-id"].startswith("req_")
    assert upstream.seen[0].body["model"] == "upstream-name"


def test_request_id_is_honoured(upstream: FakeUpstream) -> None:
    with running_gateway(config(upstream)) as base:
        r = httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES},
                       headers={"x-request-id": "my-id-123"})
    assert r.headers["x-request-id"] == "my-id-123"
    assert upstream.seen[0].headers.get("x-request-id") == "my-id-123", upstream.seen[0].headers


def test_every_field_passes_through_unchanged(upstream: FakeUpstream) -> None:
    fields = {
        "temperature": 0.3, "top_p": 0.9, "max_tokens": 17, "max_completion_tokens": 18, "n": 1,
        "stop": ["\n\n"], "seed": 42, "user": "u-1", "logprobs": True, "top_logprobs": 2,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "auto", "response_format": {"type": "json_object"},
        "top_k": 5, "ignore_eos": True, "repetition_penalty": 1.1,  # vLLM's vendor fields
    }
    upstream.replies["ok"] = [{"content": "{}"}]  # JSON was asked for: the gateway checks the reply
    with running_gateway(config(upstream)) as base:
        r = httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES, **fields})
    assert r.status_code == 200
    sent = upstream.seen[0].body
    assert {k: sent[k] for k in fields} == fields
    assert "stream" not in sent  # what the client did not send stays absent


def test_streaming_chunks_and_headers(upstream: FakeUpstream) -> None:
    with running_gateway(config(upstream)) as base:
        with httpx.stream("POST", base + "/v1/chat/completions",
                          json={"model": "m", "messages": MESSAGES, "stream": True}) as r:
            body = r.read()
            headers = r.headers
        chunks = list(client(base).chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache" and headers["x-accel-buffering"] == "no"
    assert body.endswith(b"data: [DONE]\n\n")
    assert b'"usage"' not in body  # the gateway asked for usage, and kept it to itself
    assert upstream.seen[0].body["stream_options"] == {"include_usage": True}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT


def test_streaming_with_include_usage(upstream: FakeUpstream) -> None:
    with running_gateway(config(upstream)) as base:
        chunks = list(client(base).chat.completions.create(
            model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(WORDS)


async def test_async_client_stream_and_not(upstream: FakeUpstream) -> None:
    with running_gateway(config(upstream)) as base:
        aclient = openai.AsyncOpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
        whole = await aclient.chat.completions.create(model="m", messages=MESSAGES)
        parts = [c.choices[0].delta.content or "" async for c in
                 await aclient.chat.completions.create(model="m", messages=MESSAGES, stream=True) if c.choices]
        await aclient.close()
    assert whole.choices[0].message.content == TEXT == "".join(parts)


def test_text_completions(upstream: FakeUpstream) -> None:
    with running_gateway(config(upstream)) as base:
        c = client(base)
        whole = c.completions.create(model="m", prompt="say hi")
        streamed = "".join(x.choices[0].text for x in c.completions.create(model="m", prompt="say hi", stream=True)
                           if x.choices)
    assert whole.choices[0].text == TEXT == streamed
    assert upstream.seen[0].path.endswith("/v1/completions")


def test_models_health_ready_docs(upstream: FakeUpstream) -> None:
    with running_gateway(config(upstream)) as base:
        models = client(base).models.list()
        assert [m.id for m in models] == ["m"]
        assert httpx.get(base + "/health").json() == {"status": "ok"}
        assert httpx.get(base + "/ready").json() == {"ready": True}
        spec = httpx.get(base + "/openapi.json").json()
        assert httpx.get(base + "/docs").status_code == 200
    for path in ("/v1/chat/completions", "/v1/completions", "/chat", "/v1/models", "/health", "/ready"):
        assert path in spec["paths"], path


def test_simple_chat_endpoint(upstream: FakeUpstream) -> None:
    with running_gateway(config(upstream)) as base:
        plain = httpx.post(base + "/chat", json={"messages": MESSAGES}).json()
        with httpx.stream("POST", base + "/chat", json={"messages": MESSAGES, "stream": True}) as r:
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert plain["content"] == TEXT and plain["cached"] is False and plain["elapsed_ms"] > 0
    assert events[-1] == "[DONE]"
    import json

    final = json.loads(events[-2])
    assert final["content"] == TEXT
    assert "".join(json.loads(e)["delta"] for e in events[:-2]) == TEXT


def test_master_key(upstream: FakeUpstream) -> None:
    with running_gateway(config(upstream), master_key="sk-master") as base:
        with pytest.raises(openai.AuthenticationError):
            client(base, key="wrong").chat.completions.create(model="m", messages=MESSAGES)
        no_key = httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
        assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
        ok = client(base, key="sk-master").chat.completions.create(model="m", messages=MESSAGES)
        assert ok.choices[0].message.content == TEXT
        via_header = httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES},
                                headers={"api-key": "sk-master"})
        assert via_header.status_code == 200


def test_ollama_native_translated(upstream: FakeUpstream) -> None:
    yaml = f"""
models:
  - name: llama
    deployments:
      - provider: ollama
        api_base: http://127.0.0.1:{upstream.port}/ollama
        model: llama3.2
"""
    with running_gateway(yaml) as base:
        c = client(base)
        whole = c.chat.completions.create(model="llama", messages=MESSAGES, max_tokens=9, temperature=0)
        chunks = list(c.chat.completions.create(model="llama", messages=MESSAGES, stream=True,
                                                stream_options={"include_usage": True}))
        text = c.completions.create(model="llama", prompt="hi")
    assert whole.choices[0].message.content == TEXT and whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (9, len(WORDS))
    assert upstream.seen[0].body["options"] == {"num_predict": 9, "temperature": 0}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(WORDS)
    assert text.choices[0].text == TEXT and upstream.seen[-1].path == "/ollama/api/generate"


def test_failover_to_the_next_deployment(upstream: FakeUpstream) -> None:
    yaml = f"""
models:
  - name: m
    deployments:
      - {{provider: openai, api_base: "{upstream.url('status500')}"}}
      - {{provider: openai, api_base: "{upstream.url('ok')}"}}
"""
    with running_gateway(yaml) as base:
        for _ in range(4):
            assert client(base).chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content == TEXT


def test_ollama_refusals_never_relay_the_gateways_credentials(upstream: FakeUpstream) -> None:
    secret = "Bearer proxy-secret-4f9a2c"
    yaml = "models:\n" + "".join(f"""  - name: {name}
    deployments:
      - provider: ollama
        api_base: http://127.0.0.1:{upstream.port}/{scenario}
        headers: {{Authorization: "{secret}"}}
""" for name, scenario in (("refused", "echokey"), ("quoted", "echokey400")))
    with running_gateway(yaml) as base:
        refused = httpx.post(base + "/v1/chat/completions", json={"model": "refused", "messages": MESSAGES})
        quoted = httpx.post(base + "/v1/chat/completions", json={"model": "quoted", "messages": MESSAGES})
    assert upstream.seen[0].headers["authorization"] == secret  # the proxy did get it
    assert refused.status_code == 502 and "credentials" in refused.json()["error"]["message"]  # not the client's 401
    assert quoted.status_code == 400 and "[upstream key]" in quoted.json()["error"]["message"]
    assert "proxy-secret" not in refused.text + quoted.text
