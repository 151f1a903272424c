"""Structured output over real sockets: the official SDK against a gateway in front of a scripted upstream.

The upstream answers invalid JSON, a schema mismatch or bad tool-call arguments, then (or never) a
valid reply; the gateway retries with the validation error in the conversation, sums the usage of
every call, checks streams at their end or buffers them, and bills every call within the budget.
"""

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

from tests.access_support import MASTER, REDIS, RESERVED_COST, SERVED_COST, create_key, gateway
from tests.fakes import FakeUpstream

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
STRICT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                          "required": ["city"], "additionalProperties": False}}}]
ONE_CALL = 7 + 6  # the fake's usage per call: 7 prompt and 6 completion tokens


def _yaml(upstream: FakeUpstream) -> str:
    price = "{input_per_1m: 1.0, output_per_1m: 2.0}"
    deployment = f"{{provider: openai, api_base: '{upstream.url('so')}', price: {price}}}"
    return f"""
models:
  - name: m
    deployments: [{deployment}]
  - name: buffered
    structured_output: {{streams: buffer, retries: 1}}
    deployments: [{deployment}]
access:
  keys_refresh_s: 0.2
  ledger_flush_s: 0.2
  redis_prefix: "tw-test-{secrets.token_hex(4)}:"
"""


@pytest.fixture
def served(upstream: FakeUpstream, tmp_path: Path) -> Iterator[tuple[str, openai.OpenAI]]:
    upstream.chunk_delay = 0.001
    with gateway(_yaml(upstream), tmp_path) as (base, _):
        yield base, openai.OpenAI(base_url=base + "/v1", api_key=MASTER, max_retries=2)


def _counted(base: str, kind: str) -> tuple[float, float]:
    """Model m's structured-output failures of ``kind`` and its retries, from /metrics."""
    text = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {MASTER}"}).text

    def sample(name: str, **labels: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    return (sample("tokenway_structured_output_failures_total", model="m", kind=kind),
            sample("tokenway_structured_output_retries_total", model="m"))


def _committed(base: str, key_id: str, expected: int) -> int:
    """The key's budget spend plus holds, once it reads ``expected`` or after 3 s: with Redis, the share of
    holds a process leases (benchmarks/budgets/LEASE.md) goes back within a second of the last request."""
    deadline = time.monotonic() + 3.0
    while True:
        state = httpx.get(f"{base}/admin/keys/{key_id}", headers={"Authorization": f"Bearer {MASTER}"}).json()
        committed = round(state["budgets"][0]["committed_usd"] * 1e9)
        if committed == expected or time.monotonic() > deadline:
            return committed
        time.sleep(0.1)


def test_invalid_json_is_retried_with_its_error_and_the_usage_adds_up(
    upstream: FakeUpstream, served: tuple[str, openai.OpenAI]
) -> None:
    base, client = served
    upstream.replies["so"] = [{"content": '{"name": "Ada",'}, {"content": '{"name": "Ada", "age": 36}'}]
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=MESSAGES, response_format={"type": "json_object"})
    answer = raw.parse()
    assert json.loads(answer.choices[0].message.content or "") == {"name": "Ada", "age": 36}
    assert answer.usage is not None and answer.usage.total_tokens == 2 * ONE_CALL
    assert answer.usage.prompt_tokens == 14 and answer.usage.completion_tokens == 12
    assert raw.headers["x-tokenway-structured-attempts"] == "2"
    assert len(upstream.seen) == 2
    retry = upstream.seen[1].body["messages"]
    assert retry[:1] == MESSAGES
    assert retry[1] == {"role": "assistant", "content": '{"name": "Ada",'}
    assert retry[2]["role"] == "user"
    assert "choices[0].message.content: not valid JSON" in retry[2]["content"]
    assert "line 1 column 16" in retry[2]["content"]  # where the JSON broke off
    assert _counted(base, "json") == (1, 1)


def test_a_reply_that_stays_invalid_is_a_clear_error_after_n_plus_one_calls(
    upstream: FakeUpstream, served: tuple[str, openai.OpenAI]
) -> None:
    base, client = served
    upstream.replies["so"] = [{"content": "Sure! Here is your JSON: {}"}]
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model="m", messages=MESSAGES, response_format={"type": "json_object"})
    error = raised.value
    assert error.status_code == 502
    assert error.code == "invalid_structured_output" and error.param == "response_format"
    assert "after 3 attempts (no retries left)" in error.message
    body: Any = error.body
    assert body["validation"]["kind"] == "json" and body["validation"]["attempts"] == 3
    assert body["validation"]["where"] == "choices[0].message.content"
    # Two retries (the default), and none by the SDK on top of them: x-should-retry: false.
    assert len(upstream.seen) == 3
    assert _counted(base, "json") == (3, 2)


def test_a_strict_schema_mismatch_is_retried_with_the_schema_path(
    upstream: FakeUpstream, served: tuple[str, openai.OpenAI]
) -> None:
    base, client = served
    upstream.replies["so"] = [{"content": '{"name": "Ada", "age": "thirty-six"}'},
                              {"content": '{"name": "Ada", "age": 36}'}]
    answer = client.chat.completions.create(model="m", messages=MESSAGES, response_format=STRICT)  # type: ignore[arg-type]
    assert json.loads(answer.choices[0].message.content or "") == {"name": "Ada", "age": 36}
    assert upstream.seen[0].body["response_format"] == STRICT  # the upstream gets the request as sent
    note = upstream.seen[1].body["messages"][-1]["content"]
    assert "at $.age: 'thirty-six' is not of type 'integer'" in note
    assert "conforms to the schema 'person'" in note
    assert _counted(base, "schema") == (1, 1)


def test_a_stream_is_relayed_and_checked_at_its_end(upstream: FakeUpstream, served: tuple[str, openai.OpenAI]) -> None:
    base, client = served
    upstream.replies["so"] = [{"content": "this is not JSON"}]
    text = ""
    stream = client.chat.completions.create(
        model="m", messages=MESSAGES, response_format={"type": "json_object"}, stream=True)
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    assert text == "this is not JSON"  # relayed as it came; the error event came before [DONE]
    assert "did not match the requested JSON object" in raised.value.message
    assert len(upstream.seen) == 1 and upstream.seen[0].body["stream"] is True
    assert _counted(base, "json") == (1, 0)  # nothing can be retried once the client has the text


def test_a_valid_stream_ends_normally(upstream: FakeUpstream, served: tuple[str, openai.OpenAI]) -> None:
    _, client = served
    upstream.replies["so"] = [{"content": '{"name": "Ada", "age": 36}'}]
    stream = client.chat.completions.create(
        model="m", messages=MESSAGES, response_format=STRICT, stream=True)  # type: ignore[arg-type]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert json.loads(text) == {"name": "Ada", "age": 36}


def test_a_key_that_asks_for_buffered_streams_gets_only_valid_json_streamed(
    upstream: FakeUpstream, served: tuple[str, openai.OpenAI]
) -> None:
    base, _ = served
    key = create_key(base, structured_output="buffer")
    client = openai.OpenAI(base_url=base + "/v1", api_key=key["key"], max_retries=0)
    upstream.replies["so"] = [{"content": "nope"}, {"content": '{"name": "Ada", "age": 36}'}]
    chunks = list(client.chat.completions.create(
        model="m", messages=MESSAGES, response_format=STRICT, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True}))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert json.loads(text) == {"name": "Ada", "age": 36}
    usage = chunks[-1].usage
    assert usage is not None and usage.total_tokens == 2 * ONE_CALL  # both calls
    assert [seen.body["stream"] for seen in upstream.seen] == [False, False]  # asked whole, replayed as a stream


def test_a_model_set_to_buffer_streams_fails_before_any_byte_when_no_attempt_is_valid(
    upstream: FakeUpstream, served: tuple[str, openai.OpenAI]
) -> None:
    _, client = served
    upstream.replies["so"] = [{"content": "nope"}]
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model="buffered", messages=MESSAGES, response_format={"type": "json_object"},
                                       stream=True)
    assert raised.value.status_code == 502 and raised.value.code == "invalid_structured_output"
    assert len(upstream.seen) == 2  # retries: 1 for this model


def test_tool_call_arguments_that_break_their_schema_are_retried(
    upstream: FakeUpstream, served: tuple[str, openai.OpenAI]
) -> None:
    base, client = served
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"town": "Paris"}'}}
    fixed = {**call, "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    upstream.replies["so"] = [{"tool_calls": [call]}, {"tool_calls": [fixed]}]
    answer = client.chat.completions.create(model="m", messages=MESSAGES, tools=WEATHER)  # type: ignore[arg-type]
    calls = answer.choices[0].message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    retry = upstream.seen[1].body["messages"]
    assert retry[1]["role"] == "assistant" and retry[1]["tool_calls"][0]["id"] == "call_1"
    assert retry[2]["role"] == "tool" and retry[2]["tool_call_id"] == "call_1"
    assert "'city' is a required property" in retry[2]["content"]
    assert _counted(base, "tool_arguments") == (1, 1)


def test_a_call_to_an_undeclared_tool_is_retried(upstream: FakeUpstream, served: tuple[str, openai.OpenAI]) -> None:
    _, client = served
    wrong = {"id": "c", "type": "function", "function": {"name": "get_wether", "arguments": '{"city": "Paris"}'}}
    right = {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    upstream.replies["so"] = [{"tool_calls": [wrong]}, {"tool_calls": [right]}]
    answer = client.chat.completions.create(model="m", messages=MESSAGES, tools=WEATHER)  # type: ignore[arg-type]
    assert (answer.choices[0].message.tool_calls or [])[0].function.name == "get_weather"
    result = upstream.seen[1].body["messages"][2]
    assert result["role"] == "tool"
    assert "'get_wether' is not a declared tool (declared: get_weather)" in result["content"]


def test_requests_without_structured_output_pass_through(upstream: FakeUpstream,
                                                         served: tuple[str, openai.OpenAI]) -> None:
    _, client = served
    upstream.replies["so"] = [{"content": "plain words"}]
    answer = client.chat.completions.create(model="m", messages=MESSAGES)
    assert answer.choices[0].message.content == "plain words" and len(upstream.seen) == 1


@pytest.mark.parametrize("counters", ["embedded", "redis"])
def test_retries_are_held_on_the_budget_and_every_call_is_billed(
    upstream: FakeUpstream, tmp_path: Path, counters: str
) -> None:
    upstream.replies["so"] = [{"content": "nope"}]
    with gateway(_yaml(upstream), tmp_path, **({"redis_url": REDIS} if counters == "redis" else {})) as (base, _):
        near = create_key(base, budget={"amount": 2.5 * RESERVED_COST / 1e9, "period": "total"})
        far = create_key(base, budget={"amount": 1.0, "period": "total"})
        results = {}
        for key in (near, far):
            client = openai.OpenAI(base_url=base + "/v1", api_key=key["key"], max_retries=0)
            with pytest.raises(openai.InternalServerError) as raised:
                client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=6,
                                               response_format={"type": "json_object"})
            results[key["id"]] = (raised.value.message, len(upstream.seen))
            upstream.seen.clear()
        near_committed = _committed(base, near["id"], SERVED_COST)
        far_committed = _committed(base, far["id"], 3 * SERVED_COST)
    # Near its end, the first call fits but a retry's longer prompt does not: no retry, one call billed.
    message, calls = results[near["id"]]
    assert "no retry: the key's budget cannot hold another attempt" in message and calls == 1
    assert near_committed == SERVED_COST
    # Far from it, all three calls are made and billed.
    message, calls = results[far["id"]]
    assert "after 3 attempts" in message and calls == 3
    assert far_committed == 3 * SERVED_COST
