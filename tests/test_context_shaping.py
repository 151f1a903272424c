"""Context shaping end to end: the official openai SDK against a real server, a scripted fake upstream
recording what arrived, and a fake summariser model."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.access_support import create_key, gateway
from tests.fakes import FakeUpstream
from tests.servers import running_gateway
from tokenway.config import ConfigError, parse_config

SUMMARY = "The user planned a trip to Lisbon; the weather tool said 24C and sunny."


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    fake.replies["ctx-summarizer"] = [{"content": SUMMARY}]
    fake.model_lengths["ctx-learned"] = 300
    yield fake
    fake.stop()


def config(upstream: FakeUpstream, scenario: str, context: str) -> str:
    return f"""
models:
  - name: chat
    deployments:
      - {{provider: openai, api_base: "{upstream.url(scenario)}", model: upstream-model}}
    context: {context}
  - name: small
    deployments:
      - {{provider: openai, api_base: "{upstream.url('ctx-summarizer')}", model: upstream-model}}
"""


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)


def text(tag: str, chars: int = 200) -> str:
    return (tag + " " + "lorem ipsum dolor sit amet " * 20)[:chars]


def conversation(last: str = "What should I pack?") -> list[dict[str, Any]]:
    """A system prompt, four turns (two with tool calls and their results) and the last user turn:
    by the estimate (4 characters a token, 4 a message, 3 for the reply) about 680 tokens."""
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Lisbon"}'}}
    calls = [{**call, "id": "call_2"}, {**call, "id": "call_3", "function": {"name": "time", "arguments": "{}"}}]
    return [
        {"role": "system", "content": "You are a travel assistant."},
        {"role": "user", "content": text("turn1")},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": text("result1", 120)},
        {"role": "assistant", "content": text("answer1")},
        {"role": "user", "content": text("turn2")},
        {"role": "assistant", "content": text("answer2")},
        {"role": "user", "content": text("turn3")},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_2", "content": text("result2", 80)},
        {"role": "tool", "tool_call_id": "call_3", "content": text("result3", 80)},
        {"role": "assistant", "content": text("answer3")},
        {"role": "user", "content": text("turn4")},
        {"role": "assistant", "content": text("answer4")},
        {"role": "user", "content": last},
    ]


def arrived(upstream: FakeUpstream, scenario: str) -> list[list[dict[str, Any]]]:
    return [seen.body["messages"] for seen in upstream.seen if seen.path.startswith(f"/{scenario}/")]


def assert_no_orphan_tool_messages(messages: list[dict[str, Any]]) -> None:
    called: set[str] = set()
    for message in messages:
        for tool_call in message.get("tool_calls") or []:
            called.add(tool_call["id"])
        if message["role"] == "tool":
            assert message["tool_call_id"] in called, f"orphaned tool result {message['tool_call_id']}"


def test_reject_is_openais_400_naming_messages_and_nothing_reaches_the_upstream(upstream: FakeUpstream) -> None:
    with running_gateway(config(upstream, "ctx-reject", "{window: 400}")) as base:
        with pytest.raises(openai.BadRequestError) as caught:
            client(base).chat.completions.create(model="chat", messages=conversation())  # type: ignore[arg-type]
        error = caught.value
        assert error.status_code == 400
        assert error.code == "context_length_exceeded" and error.param == "messages"
        assert "maximum context length is 400 tokens" in error.message and "estimate" in error.message
        assert arrived(upstream, "ctx-reject") == []
        # a conversation that fits passes untouched, with no header
        short = [{"role": "user", "content": "hi"}]
        raw = client(base).chat.completions.with_raw_response.create(model="chat", messages=short)  # type: ignore[arg-type]
        assert "x-tokenway-context" not in raw.headers
        assert arrived(upstream, "ctx-reject") == [short]


def test_max_tokens_is_room_the_prompt_cannot_take(upstream: FakeUpstream) -> None:
    with running_gateway(config(upstream, "ctx-room", "{window: 800}")) as base:
        messages = conversation()
        client(base).chat.completions.create(model="chat", messages=messages, max_tokens=100)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError) as caught:
            client(base).chat.completions.create(model="chat", messages=messages, max_tokens=300)  # type: ignore[arg-type]
        assert caught.value.code == "context_length_exceeded" and "300 kept for the completion" in caught.value.message


def test_trim_keeps_the_system_prompt_the_last_turn_and_tool_calls_with_their_results(upstream: FakeUpstream) -> None:
    with running_gateway(config(upstream, "ctx-trim", "{window: 500, strategy: trim, output_reserve: 50}")) as base:
        messages = conversation()
        raw = client(base).chat.completions.with_raw_response.create(model="chat", messages=messages)  # type: ignore[arg-type]
        assert raw.parse().choices[0].message.content
        streamed = client(base).chat.completions.with_raw_response.create(
            model="chat", messages=messages, stream=True)  # type: ignore[arg-type]
        assert "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
        assert streamed.headers["x-tokenway-context"] == raw.headers["x-tokenway-context"]
        sent, sent_streamed = arrived(upstream, "ctx-trim")
        assert sent_streamed == sent
    assert sent[0] == messages[0] and sent[-1] == messages[-1]
    assert len(sent) < len(messages) and sent == [messages[0], *messages[len(messages) - len(sent) + 1:]]
    assert sent[1]["role"] == "user"  # whole turns went, oldest first
    assert_no_orphan_tool_messages(sent)
    header = raw.headers["x-tokenway-context"]
    assert header.startswith("trim; tokens=") and "counted=estimate" in header
    before, after = (int(n) for n in header.split("tokens=")[1].split(";")[0].split("->"))
    assert after <= 450 < before


def test_trim_that_cannot_fit_the_last_turn_rejects(upstream: FakeUpstream) -> None:
    small = "{window: 100, strategy: trim, output_reserve: 10}"
    with running_gateway(config(upstream, "ctx-trim-small", small)) as base:
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text("long", 600)}]
        with pytest.raises(openai.BadRequestError) as caught:
            client(base).chat.completions.create(model="chat", messages=messages)  # type: ignore[arg-type]
        assert caught.value.code == "context_length_exceeded" and "last user turn do not fit" in caught.value.message
        assert arrived(upstream, "ctx-trim-small") == []


def test_summaries_are_made_once_for_a_growing_conversation(upstream: FakeUpstream) -> None:
    context = "{window: 560, strategy: summarize, summarizer: small, output_reserve: 50, summary_max_tokens: 60}"
    with running_gateway(config(upstream, "ctx-sum", context)) as base:
        first = conversation()
        raw = client(base).chat.completions.with_raw_response.create(model="chat", messages=first)  # type: ignore[arg-type]
        reply = raw.parse().choices[0].message.content or ""
        assert raw.headers["x-tokenway-context"].startswith("summarize;")
        assert "summary=made" in raw.headers["x-tokenway-context"]
        # the next request of the same conversation: the same history, the reply and a new question
        second = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "And shoes?"}]
        raw = client(base).chat.completions.with_raw_response.create(model="chat", messages=second)  # type: ignore[arg-type]
        assert "summary=cached" in raw.headers["x-tokenway-context"]
    summarizer_calls = [seen.body for seen in upstream.seen if seen.path.startswith("/ctx-summarizer/")]
    assert len(summarizer_calls) == 1
    asked = summarizer_calls[0]["messages"][-1]["content"]
    assert "turn1" in asked and "weather" in asked  # the oldest turns, tool calls included
    for sent, original in zip(arrived(upstream, "ctx-sum"), (first, second), strict=True):
        assert sent[0] == original[0] and sent[-1] == original[-1]
        assert sent[1]["role"] == "system" and SUMMARY in sent[1]["content"]
        assert "turn1" not in json.dumps(sent)
        assert_no_orphan_tool_messages(sent)


def test_the_window_is_learned_from_the_workers_max_model_len(upstream: FakeUpstream) -> None:
    with running_gateway(config(upstream, "ctx-learned", "{strategy: reject}")) as base:
        with pytest.raises(openai.BadRequestError) as caught:
            client(base).chat.completions.create(model="chat", messages=conversation())  # type: ignore[arg-type]
        assert "maximum context length is 300 tokens" in caught.value.message


def test_a_window_no_worker_reported_at_start_is_asked_for_again(upstream: FakeUpstream) -> None:
    with running_gateway(config(upstream, "ctx-late", "{strategy: reject}")) as base:
        upstream.model_lengths["ctx-late"] = 300  # the worker reports its window only now (it was loading)
        client(base).chat.completions.create(model="chat", messages=conversation())  # type: ignore[arg-type]
        deadline = time.monotonic() + 10
        while True:  # the first request passed unshaped and had the window asked for, off its path
            try:
                client(base).chat.completions.create(model="chat", messages=conversation())  # type: ignore[arg-type]
            except openai.BadRequestError as error:
                assert "maximum context length is 300 tokens" in error.message
                break
            assert time.monotonic() < deadline, "the window was not learned"
            time.sleep(0.05)


def test_an_unknown_summarizer_is_a_config_error_naming_the_line() -> None:
    yaml = """models:
  - name: chat
    deployments:
      - {provider: openai, api_base: "http://127.0.0.1:9/v1"}
    context:
      strategy: summarize
      summarizer: tiny
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml, "tokenway.yaml")
    assert "tokenway.yaml:7: models[0].context.summarizer:" in str(caught.value)
    assert "'tiny' is not another configured model (configured: chat)" in str(caught.value)
    with pytest.raises(ConfigError, match=r"tokenway.yaml:6: models\[0\].context: .*needs 'summarizer'"):
        parse_config(yaml.replace("      summarizer: tiny\n", ""), "tokenway.yaml")


def test_the_summary_is_made_and_billed_as_the_callers_key(upstream: FakeUpstream, tmp_path: Path) -> None:
    context = "{window: 560, strategy: summarize, summarizer: small, output_reserve: 50, summary_max_tokens: 60}"
    yaml = config(upstream, "ctx-billed", context) + "access: {keys_refresh_s: 0.2, ledger_flush_s: 0.1}\n"
    with gateway(yaml, tmp_path) as (base, _):
        key = create_key(base, team="summaries")
        caller = openai.OpenAI(base_url=base + "/v1", api_key=key["key"], max_retries=0)
        raw = caller.chat.completions.with_raw_response.create(
            model="chat", messages=conversation("Bills?"))  # type: ignore[arg-type]
        assert raw.headers["x-tokenway-context"].endswith("summary=made")
        deadline = time.monotonic() + 10
        while True:
            usage = httpx.get(base + "/v1/usage", headers={"Authorization": f"Bearer {key['key']}"}).json()
            models = {row["model"] for row in usage["by_model"]}
            if models >= {"chat", "small"} or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert models == {"chat", "small"}, usage  # the summariser's call is the caller's, in its ledger
