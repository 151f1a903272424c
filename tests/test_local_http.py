"""The embedded model end to end: the zero-config default, served over HTTP to the openai SDK."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.servers import running_gateway

# What `tokenway serve` runs with no config file (tokenway.config.default_config).
DEFAULT = "models:\n  - name: local\n    deployments:\n      - provider: local\n"
ASK = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def base() -> object:
    with running_gateway(DEFAULT) as url:
        yield url


def test_models_and_a_real_answer_streamed_and_not(base: str) -> None:
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["local"]
    whole = client.chat.completions.create(model="local", messages=ASK, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model="local", messages=ASK, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = whole.choices[0].message.content or ""
    assert text.strip() and whole.usage is not None and whole.usage.completion_tokens <= 12
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_prompt_over_the_context_window_is_a_400(base: str) -> None:
    r = httpx.post(base + "/v1/chat/completions", timeout=30, json={
        "model": "local", "messages": [{"role": "user", "content": "word " * 5000}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_a_client_that_hangs_up_frees_its_slot(base: str) -> None:
    body = {"model": "local", "messages": ASK, "max_tokens": 500, "stream": True, "ignore_eos": True}
    for _ in range(10):  # more hang-ups than there are slots: each must give its slot back
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    break
    started = time.perf_counter()
    r = httpx.post(base + "/v1/chat/completions", timeout=30,
                   json={"model": "local", "messages": ASK, "max_tokens": 4})
    assert r.status_code == 200 and time.perf_counter() - started < 10
