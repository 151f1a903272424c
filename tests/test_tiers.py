"""Small-model routing over real sockets: the official SDK against a gateway with one scripted fake
upstream per tier. Which tier answered shows in the response headers, in what each upstream saw,
in /metrics and in the usage ledger (which bills a dropped small answer too)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.access_support import MASTER, create_key, gateway
from tests.fakes import FakeUpstream
from tests.jobs_support import wait_job

SIMPLE = [{"role": "user", "content": "What is the capital of France?"}]
COMPLEX = [{"role": "user", "content": (
    "Design a distributed job scheduler in Go: implement leader election, analyze the trade-offs step by step, "
    "and prove that it cannot lose a job when a node fails.")}]
# The fakes' usage per call is 7 prompt and 6 completion tokens: 19,000 nano-dollars on the small tier
# (1.00/2.00 per 1M) and 190,000 on the large one (10.00/20.00 per 1M).
SMALL_CALL, LARGE_CALL = 19_000, 190_000
ADMIN = {"Authorization": f"Bearer {MASTER}"}


def _yaml(small: FakeUpstream, large: FakeUpstream) -> str:
    return f"""
models:
  - name: small
    deployments:
      - {{provider: openai, api_base: '{small.url("t")}', price: {{input_per_1m: 1.0, output_per_1m: 2.0}}}}
  - name: large
    deployments:
      - {{provider: openai, api_base: '{large.url("t")}', price: {{input_per_1m: 10.0, output_per_1m: 20.0}}}}
tiers:
  - name: auto
    tiers:
      - {{name: small, model: small, up_to: 0.3}}
      - {{name: large, model: large}}
access:
  keys_refresh_s: 0.2
  ledger_flush_s: 0.2
  redis_prefix: "tw-test-{secrets.token_hex(4)}:"
"""


@pytest.fixture
def tiers(tmp_path: Path) -> Iterator[tuple[str, openai.OpenAI, FakeUpstream, FakeUpstream]]:
    small, large = FakeUpstream(chunk_delay=0.001).start(), FakeUpstream(chunk_delay=0.001).start()
    small.replies["t"] = [{"content": "Paris."}]
    large.replies["t"] = [{"content": "A considered answer from the large model."}]
    try:
        with gateway(_yaml(small, large), tmp_path) as (base, _):
            yield base, openai.OpenAI(base_url=base + "/v1", api_key=MASTER, max_retries=0), small, large
    finally:
        small.stop()
        large.stop()


def _ask(client: openai.OpenAI, messages: list[Any], **extra: Any) -> tuple[str | None, dict[str, str]]:
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=messages, **extra)
    return raw.parse().choices[0].message.content, dict(raw.headers)


def _streamed(client: openai.OpenAI, messages: list[Any], **extra: Any) -> tuple[str, dict[str, str]]:
    with client.chat.completions.with_streaming_response.create(
            model="auto", messages=messages, stream=True, **extra) as response:
        text = "".join(chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices)
        return text, dict(response.headers)


def test_a_simple_prompt_goes_to_the_small_tier_and_a_complex_one_to_the_large(tiers: Any) -> None:
    _, client, small, large = tiers
    text, headers = _ask(client, SIMPLE)
    assert text == "Paris." and headers["x-tokenway-tier"] == "small" and headers["x-tokenway-tier-reason"] == "score"
    assert [seen.body["model"] for seen in small.seen] == ["small"] and not large.seen
    text, headers = _ask(client, COMPLEX)
    assert text == "A considered answer from the large model." and headers["x-tokenway-tier"] == "large"
    assert len(small.seen) == 1 and [seen.body["model"] for seen in large.seen] == ["large"]


def test_the_override_header_picks_the_tier_and_an_unknown_one_is_a_400_naming_it(tiers: Any) -> None:
    _, client, _, large = tiers
    text, headers = _ask(client, COMPLEX, extra_headers={"x-tokenway-tier": "small"})
    assert text == "Paris." and headers["x-tokenway-tier-reason"] == "override" and not large.seen
    _, headers = _ask(client, SIMPLE, extra_headers={"x-tokenway-tier": "large"})
    assert headers["x-tokenway-tier"] == "large" and len(large.seen) == 1
    with pytest.raises(openai.BadRequestError) as refused:
        _ask(client, SIMPLE, extra_headers={"x-tokenway-tier": "huge"})
    assert refused.value.body["param"] == "x-tokenway-tier"  # type: ignore[index]
    assert "small" in refused.value.message and "large" in refused.value.message


def test_an_overridden_small_tier_is_not_escalated(tiers: Any) -> None:
    _, client, small, large = tiers
    small.replies["t"] = [{"content": ""}]
    text, headers = _ask(client, SIMPLE, extra_headers={"x-tokenway-tier": "small"})
    assert text == "" and headers["x-tokenway-tier"] == "small" and not large.seen


@pytest.mark.parametrize(("reply", "extra", "check"), [
    ({"content": ""}, {}, "empty"),
    ({"content": "I'm sorry, but I can't help with that request."}, {}, "refusal"),
    ({"content": None, "refusal": "I cannot assist with that."}, {}, "refusal"),
    ({"content": "Sure! The answer is {\"city\": \"Paris\"}"}, {"response_format": {"type": "json_object"}},
     "invalid_json"),
    ({"content": "{\"city\": \"Par"}, {"response_format": {"type": "json_object"}}, "invalid_json"),
])
def test_a_small_answer_failing_a_check_is_asked_again_of_the_large_tier(
    tiers: Any, reply: dict[str, Any], extra: dict[str, Any], check: str
) -> None:
    base, client, small, large = tiers
    small.replies["t"] = [reply]
    large.replies["t"] = [{"content": "{\"city\": \"Paris\"}"}]
    text, headers = _ask(client, SIMPLE, **extra)
    assert text == "{\"city\": \"Paris\"}"
    assert headers["x-tokenway-tier"] == "large" and headers["x-tokenway-tier-reason"] == f"escalated:{check}"
    # Structured output (on for every model by default) first asks the small tier twice more for valid JSON.
    assert len(small.seen) == (3 if check == "invalid_json" else 1) and len(large.seen) == 1
    metrics = httpx.get(base + "/metrics", headers=ADMIN).text
    assert f'tokenway_tier_escalations_total{{check="{check}",router="auto",tier="small"}} 1.0' in metrics
    assert f'tokenway_tier_decisions_total{{reason="escalated:{check}",router="auto",tier="large"}} 1.0' in metrics


def test_the_request_log_line_carries_the_decision(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    small, large = FakeUpstream(chunk_delay=0.001).start(), FakeUpstream(chunk_delay=0.001).start()
    small.replies["t"], large.replies["t"] = [{"content": ""}], [{"content": "Paris."}]
    try:
        with gateway(_yaml(small, large), tmp_path) as (base, _):  # started here, so its log goes to capfd
            capfd.readouterr()
            _ask(openai.OpenAI(base_url=base + "/v1", api_key=MASTER, max_retries=0), SIMPLE)
            time.sleep(0.5)  # the log's flusher writes a few times a second
            out = capfd.readouterr().out
    finally:
        small.stop()
        large.stop()
    lines = [json.loads(line) for line in out.splitlines() if '"event":"request"' in line]
    assert len(lines) == 1 and lines[0]["model"] == "large" and lines[0]["deployment"] == "large#0"
    assert lines[0]["tier"] == {"router": "auto", "tier": "large", "reason": "escalated:empty", "score": 0.0,
                                "scorer": "heuristic", "escalated_from": ["small"]}


def test_a_valid_json_answer_stays_on_the_small_tier(tiers: Any) -> None:
    _, client, small, large = tiers
    small.replies["t"] = [{"content": "{\"city\": \"Paris\"}"}]
    text, headers = _ask(client, SIMPLE, response_format={"type": "json_object"})
    assert text == "{\"city\": \"Paris\"}" and headers["x-tokenway-tier"] == "small" and not large.seen


@pytest.mark.parametrize(("reply", "extra"), [
    ({"content": ""}, {}),
    ({"content": "I'm sorry, but I can't help with that request, it is outside what I may do."}, {}),
    ({"content": "Here you go: {\"city\": \"Paris\"}"}, {"response_format": {"type": "json_object"}}),
])
def test_a_stream_failing_a_check_is_switched_to_the_large_tier_before_its_first_byte(
    tiers: Any, reply: dict[str, Any], extra: dict[str, Any]
) -> None:
    _, client, small, large = tiers
    small.replies["t"] = [reply]
    large.replies["t"] = [{"content": "{\"city\": \"Paris\"}"}]
    text, headers = _streamed(client, SIMPLE, **extra)
    assert text == "{\"city\": \"Paris\"}"  # nothing of the small tier's answer reached the client
    assert headers["x-tokenway-tier"] == "large" and headers["x-tokenway-tier-reason"].startswith("escalated:")
    assert len(small.seen) == 1 and len(large.seen) == 1


def test_a_passing_stream_is_relayed_whole_with_the_blocks_read_for_the_check(tiers: Any) -> None:
    _, client, small, large = tiers
    long = "The capital of France is Paris, on the Seine, and it has been for a very long time indeed."
    small.replies["t"] = [{"content": long}]
    text, headers = _streamed(client, SIMPLE, stream_options={"include_usage": True})
    assert text == long and headers["x-tokenway-tier"] == "small" and not large.seen


def test_the_ledger_shows_the_model_that_answered_and_bills_the_dropped_answer(tiers: Any) -> None:
    base, _, small, _ = tiers
    key = create_key(base, models=["auto"])
    routed = openai.OpenAI(base_url=base + "/v1", api_key=key["key"], max_retries=0)
    _ask(routed, SIMPLE)  # small answers
    small.replies["t"] = [{"content": ""}]
    _ask(routed, SIMPLE)  # small's empty answer is dropped, large answers
    with pytest.raises(openai.PermissionDeniedError):  # the key reaches the tiers through the router only
        routed.chat.completions.create(model="small", messages=SIMPLE)  # type: ignore[arg-type]
    rows = httpx.get(base + "/admin/usage?group_by=model", headers=ADMIN).json()["data"]
    by_model = {row["model"]: (row["requests"], row["cost_nanos"]) for row in rows}
    assert by_model["small"] == (1, SMALL_CALL)
    assert by_model["large"] == (1, SMALL_CALL + LARGE_CALL)


@pytest.mark.parametrize(("budget_nanos", "escalated"), [(400_000, False), (600_000, True)])
def test_an_escalation_is_made_only_when_the_budget_can_hold_it(
    tiers: Any, budget_nanos: int, escalated: bool
) -> None:
    base, _, small, large = tiers
    small.replies["t"] = [{"content": ""}]
    # The request's hold is its worst case at the large tier's rates: 15 estimated prompt and 6 completion
    # tokens, 270,000 nano-dollars. 400,000 holds it once, not a second time for the large tier; 600,000 does.
    key = create_key(base, models=["auto"], budget={"amount": budget_nanos / 1e9, "period": "total"})
    client = openai.OpenAI(base_url=base + "/v1", api_key=key["key"], max_retries=0)
    text, headers = _ask(client, SIMPLE, max_tokens=6)
    assert headers["x-tokenway-tier"] == ("large" if escalated else "small")
    assert text == ("A considered answer from the large model." if escalated else "")
    assert len(small.seen) == 1 and len(large.seen) == int(escalated)


def test_the_router_is_listed_and_takes_async_jobs_for_a_key_allowed_only_it(tiers: Any) -> None:
    base, _, small, _ = tiers
    key = create_key(base, models=["auto"])["key"]
    auth = {"Authorization": f"Bearer {key}"}
    listed = httpx.get(base + "/v1/models", headers=auth).json()["data"]
    assert [model["id"] for model in listed] == ["auto"]
    assert [m["id"] for m in httpx.get(base + "/v1/models", headers=ADMIN).json()["data"]] == ["small", "large", "auto"]
    submitted = httpx.post(base + "/v1/async/chat/completions", json={"model": "auto", "messages": SIMPLE},
                           headers=auth)
    assert submitted.status_code == 202, submitted.text
    done = wait_job(base, key, submitted.json()["id"])
    assert done["status"] == "succeeded" and done["result"]["choices"][0]["message"]["content"] == "Paris."
    assert [seen.body["model"] for seen in small.seen] == ["small"]  # the job's request was routed too


def test_the_anthropic_front_door_is_routed_too(tiers: Any) -> None:
    base, _, small, _ = tiers
    body = {"model": "auto", "messages": SIMPLE}
    counted = httpx.post(base + "/v1/messages/count_tokens", json=body, headers={"x-api-key": MASTER})
    answered = httpx.post(base + "/v1/messages", json={**body, "max_tokens": 50}, headers={"x-api-key": MASTER})
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 0
    assert answered.status_code == 200 and answered.headers["x-tokenway-tier"] == "small"
    assert answered.json()["content"][0]["text"] == "Paris." and answered.json()["model"] == "auto"
    assert [seen.body["model"] for seen in small.seen] == ["small"]


def test_a_router_naming_an_unknown_model_is_a_config_error_with_its_line(tmp_path: Path) -> None:
    from tokenway.config import ConfigError, parse_config

    text = """models:
  - name: small
    deployments: [{provider: openai, api_base: 'http://127.0.0.1:9/v1'}]
tiers:
  - name: auto
    tiers:
      - {model: small, up_to: 0.3}
      - {model: gpt-huge}
"""
    with pytest.raises(ConfigError) as error:
        parse_config(text, "tokenway.yaml")
    assert str(error.value).startswith("tokenway.yaml:8: tiers[0].tiers[1].model:")
    assert "'gpt-huge' is not configured (models: small)" in str(error.value)
