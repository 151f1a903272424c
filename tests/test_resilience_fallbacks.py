"""Fallback chains, context-window fallbacks, degradation and circuit breakers over real sockets.

The same policies in process, on a fake clock: tests/test_chain_fallbacks.py and test_chain_breaker.py.
"""

from __future__ import annotations

import httpx
import openai

from tests.fakes import WORDS, FakeUpstream
from tests.inprocess import FakeClock
from tests.test_resilience_retries import MESSAGES, calls_to, chat, decisions
from tokenway.routing.breaker import CircuitBreaker
from tokenway.routing.options import BreakerConfig

TEXT = "".join(WORDS)


def two_models(upstream: FakeUpstream, primary: str, backup: str, model: str = "") -> str:
    extra = "".join(f"    {line}\n" for line in model.splitlines() if line.strip())
    row = "    deployments:\n      - {{provider: openai, api_base: '{}'}}\n"
    return (f"models:\n  - name: m\n{row.format(upstream.url(primary))}{extra}"
            f"  - name: backup\n{row.format(upstream.url(backup))}")


def test_fallback_model_answers_when_every_deployment_fails(upstream: FakeUpstream) -> None:
    from tests.servers import running_gateway

    with running_gateway(two_models(upstream, "status500", "ok", "fallbacks: [backup]")) as base:
        r = chat(base)
        stats = decisions(base)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == TEXT
    assert calls_to(upstream, "status500") == 3 and calls_to(upstream, "ok") == 1
    assert stats["fallback.model"] == 1


def test_context_overflow_goes_to_the_long_context_model_without_retries(upstream: FakeUpstream) -> None:
    from tests.servers import running_gateway

    with running_gateway(two_models(upstream, "toolong", "ok", "context_fallbacks: [backup]")) as base:
        r = chat(base)
        stats = decisions(base)
    assert r.status_code == 200 and calls_to(upstream, "toolong") == 1
    assert stats["fallback.context"] == 1
    with running_gateway(two_models(upstream, "toolong", "ok")) as base:
        r = chat(base)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert calls_to(upstream, "toolong") == 2  # a 400 is never retried


def test_degraded_reply_is_marked(upstream: FakeUpstream) -> None:
    from tests.servers import running_gateway

    model = 'degradation: {reply: "The assistant is busy; please try again."}'
    with running_gateway(two_models(upstream, "status500", "ok", model)) as base:
        raw = httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES}, timeout=10)
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
        chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))  # type: ignore[arg-type]
    assert raw.status_code == 200 and raw.headers["x-tokenway-degraded"] == "true"
    assert raw.json()["system_fingerprint"] == "tokenway-degraded"
    assert raw.json()["choices"][0]["message"]["content"].startswith("The assistant is busy")
    assert chunks[0].system_fingerprint == "tokenway-degraded"


def test_breaker_opens_and_routing_skips_the_failing_deployment(upstream: FakeUpstream) -> None:
    from tests.servers import running_gateway

    yaml = (f"models:\n  - name: m\n    breaker: {{consecutive_failures: 2, cooldown: 60}}\n    deployments:\n"
            f"      - {{provider: openai, name: bad, api_base: '{upstream.url('status500')}'}}\n"
            f"      - {{provider: openai, name: good, api_base: '{upstream.url('ok')}'}}\n")
    with running_gateway(yaml) as base:
        assert all(chat(base).status_code == 200 for _ in range(10))
        state = httpx.get(base + "/admin/deployments").json()["models"]["m"]
        stats = decisions(base)
    assert calls_to(upstream, "status500") == 2  # then ejected: the other 8 calls never tried it
    bad = next(d for d in state if d["name"] == "bad")
    assert bad["breaker"]["state"] == "open" and "consecutive" in bad["breaker"]["reason"]
    assert stats["skip.breaker_open"] >= 8


def test_all_breakers_open_sheds_with_retry_after(upstream: FakeUpstream) -> None:
    from tests.servers import running_gateway

    yaml = (f"models:\n  - name: m\n    breaker: {{consecutive_failures: 1, cooldown: 30}}\n"
            f"    retry: {{attempts: 1}}\n    deployments:\n"
            f"      - {{provider: openai, api_base: '{upstream.url('status500')}'}}\n")
    with running_gateway(yaml) as base:
        first, second = chat(base), chat(base)
    assert first.status_code == 502
    assert second.status_code == 503 and second.json()["error"]["code"] == "no_healthy_deployment"
    assert int(second.headers["retry-after"]) >= 20
    assert calls_to(upstream, "status500") == 1


def test_breaker_state_machine() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(window=10, min_calls=4, error_rate=0.5, consecutive_failures=3,
                                           cooldown=5, half_open_probes=1), clock)
    for failed in (False, True, False, True):  # 2/4 failed: the rate threshold, judged on a failure
        breaker.failure() if failed else breaker.success()
    assert breaker.state == "open" and "2/4" in breaker.reason
    clock.advance(1)
    assert not breaker.allows()
    clock.advance(4)
    assert breaker.allows()
    assert breaker.acquire() and breaker.state == "half_open"
    assert not breaker.acquire()  # one probe at a time
    clock.advance(1)
    breaker.failure()
    assert breaker.state == "open"  # the probe failed: open again for a full cooldown
    clock.advance(5)
    assert breaker.acquire()
    breaker.success()
    assert breaker.state == "closed"
    clock.advance(1)
    for _ in range(3):
        breaker.failure()
    assert breaker.state == "open" and "3 consecutive" in breaker.reason
