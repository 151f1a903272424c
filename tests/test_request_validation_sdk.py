"""Request validation over a socket: the official openai SDK against a real gateway and a fake upstream.

Each malformed request raises ``openai.BadRequestError`` with the field in ``param`` and nothing
reaches the upstream; a good one with vendor fields reaches it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from tests.fakes import FakeUpstream
from tests.servers import running_gateway
from tests.test_gateway_openai import client, config

USER: Any = [{"role": "user", "content": "hi"}]
TOOL: Any = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
Request = Callable[[openai.OpenAI], Any]


def chat(**fields: Any) -> Request:
    fields.setdefault("messages", USER)
    return lambda sdk: sdk.chat.completions.create(model="m", **fields)


def completion(**fields: Any) -> Request:
    fields.setdefault("prompt", "Say hi")
    return lambda sdk: sdk.completions.create(model="m", **fields)


MALFORMED: list[tuple[str, Request, str, str]] = [
    # the four of issue 24
    ("a message without role", chat(messages=[{"content": "hi"}]), "messages[0].role", "missing_required_parameter"),
    ('"stream": "yes"', chat(extra_body={"stream": "yes"}), "stream", "invalid_type"),
    ("a tool whose function is a string", chat(tools=[{"type": "function", "function": "get_weather"}]),
     "tools[0].function", "invalid_type"),
    ("1,000 stop sequences", chat(stop=["."] * 1000), "stop", "array_above_max_length"),
    # and a handful more
    ("an unknown role", chat(messages=[{"role": "bot", "content": "hi"}]), "messages[0].role", "invalid_value"),
    ("a user message without content", chat(messages=[{"role": "user"}]), "messages[0].content",
     "missing_required_parameter"),
    ("a tool message without tool_call_id", chat(messages=[{"role": "tool", "content": "sunny"}]),
     "messages[0].tool_call_id", "missing_required_parameter"),
    ("n 0", chat(n=0), "n", "integer_below_min_value"),
    ("temperature 3", chat(temperature=3), "temperature", "decimal_above_max_value"),
    ("top_logprobs without logprobs", chat(top_logprobs=3), "top_logprobs", "invalid_value"),
    ("stream_options without stream", chat(stream_options={"include_usage": True}), "stream_options",
     "invalid_value"),
    ("a tool_choice naming no declared tool", chat(tools=[TOOL], tool_choice={
        "type": "function", "function": {"name": "book_flight"}}), "tool_choice", "invalid_value"),
    ("a tool name with a space", chat(tools=[{"type": "function", "function": {"name": "get weather"}}]),
     "tools[0].function.name", "invalid_value"),
    ("json_schema without its spec", chat(response_format={"type": "json_schema"}), "response_format.json_schema",
     "missing_required_parameter"),
    ("logit_bias 500", chat(logit_bias={"50256": 500}), "logit_bias", "decimal_above_max_value"),
    ("an empty prompt list", completion(prompt=[]), "prompt", "empty_array"),
    ("completions logprobs 6", completion(logprobs=6), "logprobs", "integer_above_max_value"),
    ("best_of below n", completion(n=3, best_of=2), "best_of", "invalid_value"),
]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, FakeUpstream]]:
    upstream = FakeUpstream().start()
    try:
        with running_gateway(config(upstream)) as base:
            yield base, upstream
    finally:
        upstream.stop()


@pytest.mark.parametrize(("name", "request_", "param", "code"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_request_is_a_bad_request_naming_the_field(
    served: tuple[str, FakeUpstream], name: str, request_: Request, param: str, code: str
) -> None:
    base, upstream = served
    seen = len(upstream.seen)
    with pytest.raises(openai.BadRequestError) as raised:
        request_(client(base))
    error = raised.value
    assert (error.status_code, error.param, error.code, error.type) == (400, param, code, "invalid_request_error")
    assert f"'{param}'" in error.message
    assert len(upstream.seen) == seen, "a malformed request reached the upstream"


def test_a_stream_request_that_is_malformed_fails_before_any_event(served: tuple[str, FakeUpstream]) -> None:
    base, upstream = served
    seen = len(upstream.seen)
    with pytest.raises(openai.BadRequestError) as raised:
        client(base).chat.completions.create(model="m", messages=[{"role": "user"}], stream=True)  # type: ignore[typeddict-item]
    assert raised.value.param == "messages[0].content"
    assert len(upstream.seen) == seen


def test_vendor_fields_pass_through_and_absent_fields_stay_absent(served: tuple[str, FakeUpstream]) -> None:
    base, upstream = served
    vendor = {"top_k": 20, "ignore_eos": False, "chat_template_kwargs": {"enable_thinking": False}}
    messages: Any = [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                             {"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}]}]
    answer = client(base).chat.completions.create(
        model="m", messages=messages, temperature=1, stop=["\n"], tools=[TOOL], extra_body=vendor)
    assert answer.choices[0].message.content
    sent = upstream.seen[-1].body
    assert {k: sent[k] for k in vendor} == vendor
    assert sent["messages"] == messages and sent["tools"] == [TOOL] and sent["stop"] == ["\n"]
    assert "stream" not in sent and "n" not in sent and "stream_options" not in sent
