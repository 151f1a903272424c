"""Request validation, in process: every rule on known fields, good and bad, as tables.

Each bad body gets a 400 naming the field the way OpenAI does (``param``, ``code``), from
``parse_body`` and through the front door (nothing reaches the provider); each good body comes
out exactly as it went in (vendor fields untouched, absent fields absent). The published JSON
Schema agrees with both tables wherever JSON Schema can say the rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.inprocess import gateway, reply
from tests.property_support import PROPERTY
from tokenway.api.calls import read_call
from tokenway.config import Limits
from tokenway.errors import InvalidRequest
from tokenway.protocol import CHAT_REQUEST, COMPLETION_REQUEST, SIMPLE_CHAT_REQUEST, parse_body
from tokenway.providers.base import Call
from tokenway.usage.cost import prompt_size

DROP = object()  # a field the case leaves out
USER = {"role": "user", "content": "hi"}
BASES: dict[str, dict[str, Any]] = {
    "chat": {"model": "m", "messages": [USER]},
    "completions": {"model": "m", "prompt": "Say hi"},
    "simple": {"messages": [USER]},
}
ADAPTERS = {"chat": CHAT_REQUEST, "completions": COMPLETION_REQUEST, "simple": SIMPLE_CHAT_REQUEST}
REQUIRED = {"chat": ("model", "messages"), "completions": ("model", "prompt"), "simple": ("messages",)}
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "simple": "/chat"}
CONFIG = "models:\n  - name: m\n    deployments:\n      - {provider: fake, name: a}\n"


@dataclass
class Case:
    """A body (the kind's base with ``fields`` over it, or ``raw`` bytes) and what it should get."""

    name: str
    fields: dict[str, Any] = field(default_factory=dict)
    param: str | None = None  # None with code None: the body is valid
    code: str | None = None
    kind: str = "chat"
    raw: bytes | None = None
    in_schema: bool = True  # JSON Schema can say this rule (else only the validator knows it)

    def body(self) -> dict[str, Any]:
        out = {**BASES[self.kind], **self.fields}
        return {k: v for k, v in out.items() if v is not DROP}

    def bytes(self) -> bytes:
        return self.raw if self.raw is not None else orjson.dumps(self.body())


def one(message: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [message]}


def tool(function: Any = None, **entry: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "get_weather"} if function is None else function, **entry}


def calls(*tool_calls: dict[str, Any]) -> dict[str, Any]:
    return one({"role": "assistant", "content": None, "tool_calls": list(tool_calls)})


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
MISSING, TYPE, VALUE = "missing_required_parameter", "invalid_type", "invalid_value"

BAD = [
    # messages and roles
    Case("no messages", {"messages": DROP}, "messages", MISSING),
    Case("no messages, /chat", {"messages": DROP}, "messages", MISSING, kind="simple"),
    Case("empty messages", {"messages": []}, "messages", "empty_array"),
    Case("messages not a list", {"messages": "hi"}, "messages", TYPE),
    Case("message not an object", {"messages": ["hi"]}, "messages[0]", TYPE),
    Case("message without role", one({"content": "hi"}), "messages[0].role", MISSING),
    Case("message without role, /chat", one({"content": "hi"}), "messages[0].role", MISSING, kind="simple"),
    Case("unknown role", one({"role": "bot", "content": "hi"}), "messages[0].role", VALUE),
    Case("role not a string", one({"role": 1, "content": "hi"}), "messages[0].role", TYPE),
    Case("user without content", one({"role": "user"}), "messages[0].content", MISSING),
    Case("system without content", one({"role": "system"}), "messages[0].content", MISSING),
    Case("developer without content", one({"role": "developer"}), "messages[0].content", MISSING),
    Case("user content null", one({"role": "user", "content": None}), "messages[0].content", TYPE),
    Case("content a number", one({"role": "user", "content": 5}), "messages[0].content", TYPE),
    Case("name not a string", one({"role": "user", "content": "hi", "name": 5}), "messages[0].name", TYPE),
    Case("second message bad", {"messages": [USER, {"role": "user", "content": {}}]}, "messages[1].content", TYPE),
    # content parts
    Case("part not an object", one({"role": "user", "content": ["hi"]}), "messages[0].content[0]", TYPE),
    Case("part without type", one({"role": "user", "content": [{"text": "hi"}]}), "messages[0].content[0].type",
         MISSING),
    Case("text part without text", one({"role": "user", "content": [{"type": "text"}]}),
         "messages[0].content[0].text", MISSING),
    Case("text part, text a number", one({"role": "user", "content": [{"type": "text", "text": 1}]}),
         "messages[0].content[0].text", TYPE),
    Case("image part without image_url", one({"role": "user", "content": [{"type": "image_url"}]}),
         "messages[0].content[0].image_url", MISSING),
    Case("image part without url", one({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}),
         "messages[0].content[0].image_url.url", MISSING),
    Case("image_url a string", one({"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}),
         "messages[0].content[0].image_url", TYPE),
    Case("other part, text a number", one({"role": "user", "content": [{"type": "video", "text": 1}]}),
         "messages[0].content[0].text", TYPE),
    # tool, function and assistant messages
    Case("tool without tool_call_id", one({"role": "tool", "content": "sunny"}), "messages[0].tool_call_id", MISSING),
    Case("tool_call_id a number", one({"role": "tool", "content": "sunny", "tool_call_id": 1}),
         "messages[0].tool_call_id", TYPE),
    Case("tool without content", one({"role": "tool", "tool_call_id": "call_1"}), "messages[0].content", MISSING),
    Case("function without name", one({"role": "function", "content": "sunny"}), "messages[0].name", MISSING),
    Case("assistant says nothing", one({"role": "assistant"}), "messages[0].content", MISSING, in_schema=True),
    Case("assistant, content null only", one({"role": "assistant", "content": None}), "messages[0].content", MISSING),
    Case("assistant, /chat", one({"role": "assistant"}), "messages[0].content", MISSING, kind="simple"),
    Case("tool_calls not a list", one({"role": "assistant", "tool_calls": CALL}), "messages[0].tool_calls", TYPE),
    Case("tool call without id", calls({"type": "function", "function": CALL["function"]}),
         "messages[0].tool_calls[0].id", MISSING),
    Case("tool call of another type", calls({**CALL, "type": "code"}), "messages[0].tool_calls[0].type", VALUE),
    Case("tool call without function", calls({"id": "c", "type": "function"}), "messages[0].tool_calls[0].function",
         MISSING),
    Case("tool call without name", calls({**CALL, "function": {"arguments": "{}"}}),
         "messages[0].tool_calls[0].function.name", MISSING),
    Case("tool call arguments an object", calls({**CALL, "function": {"name": "f", "arguments": {}}}),
         "messages[0].tool_calls[0].function.arguments", TYPE),
    # tools and tool_choice
    Case("tools not a list", {"tools": tool()}, "tools", TYPE),
    Case("tool function a string", {"tools": [tool("get_weather")]}, "tools[0].function", TYPE),
    Case("tool without function", {"tools": [{"type": "function"}]}, "tools[0].function", MISSING),
    Case("tool type a number", {"tools": [{"type": 1}]}, "tools[0].type", TYPE),
    Case("tool without name", {"tools": [tool({"description": "x"})]}, "tools[0].function.name", MISSING),
    Case("tool name with a space", {"tools": [tool({"name": "get weather"})]}, "tools[0].function.name", VALUE),
    Case("tool name of 65", {"tools": [tool({"name": "f" * 65})]}, "tools[0].function.name", VALUE),
    Case("tool description a number", {"tools": [tool({"name": "f", "description": 1})]},
         "tools[0].function.description", TYPE),
    Case("tool parameters a string", {"tools": [tool({"name": "f", "parameters": "{}"})]},
         "tools[0].function.parameters", TYPE),
    Case("tool strict a string", {"tools": [tool({"name": "f", "strict": "yes"})]}, "tools[0].function.strict", TYPE),
    Case("129 tools", {"tools": [tool({"name": f"f{i}"}) for i in range(129)]}, "tools", "array_above_max_length"),
    Case("tool_choice unknown", {"tool_choice": "sometimes"}, "tool_choice", VALUE),
    Case("tool_choice a number", {"tool_choice": 1}, "tool_choice", TYPE),
    Case("tool_choice without function", {"tool_choice": {"type": "function"}}, "tool_choice.function", MISSING),
    Case("tool_choice names no tool", {"tools": [tool()], "tool_choice": {"type": "function",
                                                                          "function": {"name": "other"}}},
         "tool_choice", VALUE, in_schema=False),
    Case("tool_choice named, no tools", {"tool_choice": {"type": "function", "function": {"name": "f"}}},
         "tool_choice", VALUE, in_schema=False),
    Case("parallel_tool_calls a string", {"parallel_tool_calls": "true"}, "parallel_tool_calls", TYPE),
    # streaming
    Case("stream 'yes'", {"stream": "yes"}, "stream", TYPE),
    Case("stream 1", {"stream": 1}, "stream", TYPE),
    Case("stream 'yes', completions", {"stream": "yes"}, "stream", TYPE, kind="completions"),
    Case("stream 'yes', /chat", {"stream": "yes"}, "stream", TYPE, kind="simple"),
    Case("stream_options without stream", {"stream_options": {"include_usage": True}}, "stream_options", VALUE),
    Case("stream_options, stream false", {"stream": False, "stream_options": {}}, "stream_options", VALUE),
    Case("stream_options without stream, completions", {"stream_options": {}}, "stream_options", VALUE,
         kind="completions"),
    Case("include_usage a string", {"stream": True, "stream_options": {"include_usage": "yes"}},
         "stream_options.include_usage", TYPE),
    Case("stream_options a string", {"stream": True, "stream_options": "usage"}, "stream_options", TYPE),
    # stop, n, logprobs
    Case("1,000 stops", {"stop": ["."] * 1000}, "stop", "array_above_max_length"),
    Case("5 stops", {"stop": list("abcde")}, "stop", "array_above_max_length"),
    Case("stop a number", {"stop": 5}, "stop", TYPE),
    Case("stop of numbers", {"stop": [5]}, "stop[0]", TYPE),
    Case("n 0", {"n": 0}, "n", "integer_below_min_value"),
    Case("n 129", {"n": 129}, "n", "integer_above_max_value"),
    Case("n 1.5", {"n": 1.5}, "n", TYPE),
    Case("n '2'", {"n": "2"}, "n", TYPE),
    Case("logprobs 1", {"logprobs": 1}, "logprobs", TYPE),
    Case("top_logprobs 21", {"logprobs": True, "top_logprobs": 21}, "top_logprobs", "integer_above_max_value"),
    Case("top_logprobs -1", {"logprobs": True, "top_logprobs": -1}, "top_logprobs", "integer_below_min_value"),
    Case("top_logprobs without logprobs", {"top_logprobs": 2}, "top_logprobs", VALUE),
    Case("top_logprobs, logprobs false", {"logprobs": False, "top_logprobs": 2}, "top_logprobs", VALUE),
    # sampling ranges and plain types
    Case("temperature 2.5", {"temperature": 2.5}, "temperature", "decimal_above_max_value"),
    Case("temperature -0.1", {"temperature": -0.1}, "temperature", "decimal_below_min_value"),
    Case("temperature '0.7'", {"temperature": "0.7"}, "temperature", TYPE),
    Case("temperature true", {"temperature": True}, "temperature", TYPE),
    Case("top_p 1.5", {"top_p": 1.5}, "top_p", "decimal_above_max_value"),
    Case("presence_penalty 2.1", {"presence_penalty": 2.1}, "presence_penalty", "decimal_above_max_value"),
    Case("frequency_penalty -3", {"frequency_penalty": -3}, "frequency_penalty", "decimal_below_min_value"),
    Case("max_tokens 0", {"max_tokens": 0}, "max_tokens", "integer_below_min_value"),
    Case("max_tokens '100'", {"max_tokens": "100"}, "max_tokens", TYPE),
    Case("max_completion_tokens 0", {"max_completion_tokens": 0}, "max_completion_tokens",
         "integer_below_min_value"),
    Case("seed 1.5", {"seed": 1.5}, "seed", TYPE),
    Case("seed past 64 bits", raw=b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], '
         b'"seed": 123456789012345678901234567890}', param="seed", code="integer_above_max_value"),
    Case("vendor number past 64 bits", raw=b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], '
         b'"top_k": 123456789012345678901234567890}', param="top_k", code=VALUE, in_schema=False),
    Case("user a number", {"user": 5}, "user", TYPE),
    Case("logit_bias key not a token id", {"logit_bias": {"hello": 1}}, "logit_bias", VALUE),
    Case("logit_bias 101", {"logit_bias": {"50256": 101}}, "logit_bias", "decimal_above_max_value"),
    Case("logit_bias value a string", {"logit_bias": {"50256": "1"}}, "logit_bias", TYPE),
    Case("logit_bias a list", {"logit_bias": [1]}, "logit_bias", TYPE),
    Case("metadata of 17", {"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "object_above_max_properties"),
    Case("metadata key of 65", {"metadata": {"k" * 65: "v"}}, "metadata", "string_above_max_length"),
    Case("metadata value of 513", {"metadata": {"k": "v" * 513}}, "metadata", "string_above_max_length"),
    Case("metadata value a number", {"metadata": {"k": 1}}, "metadata", TYPE),
    Case("model empty", {"model": ""}, "model", "empty_string"),
    Case("model a number", {"model": 5}, "model", TYPE),
    Case("no model", {"model": DROP}, "model", MISSING),
    Case("model empty, /chat", {"model": ""}, "model", "empty_string", kind="simple"),
    # response_format
    Case("response_format a string", {"response_format": "json"}, "response_format", TYPE),
    Case("response_format without type", {"response_format": {}}, "response_format.type", MISSING),
    Case("response_format type a number", {"response_format": {"type": 1}}, "response_format.type", TYPE),
    Case("json_schema missing", {"response_format": {"type": "json_schema"}}, "response_format.json_schema",
         MISSING),
    Case("json_schema without name", {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
         "response_format.json_schema.name", MISSING),
    Case("json_schema name with a space", {"response_format": {"type": "json_schema",
                                                               "json_schema": {"name": "my schema"}}},
         "response_format.json_schema.name", VALUE),
    Case("json_schema schema a string", {"response_format": {"type": "json_schema",
                                                             "json_schema": {"name": "s", "schema": "{}"}}},
         "response_format.json_schema.schema", TYPE),
    Case("json_schema strict a string", {"response_format": {"type": "json_schema",
                                                             "json_schema": {"name": "s", "strict": "yes"}}},
         "response_format.json_schema.strict", TYPE),
    # completions
    Case("no prompt", {"prompt": DROP}, "prompt", MISSING, kind="completions"),
    Case("prompt []", {"prompt": []}, "prompt", "empty_array", kind="completions"),
    Case("prompt [[]]", {"prompt": [[]]}, "prompt[0]", "empty_array", kind="completions"),
    Case("prompt a number", {"prompt": 5}, "prompt", TYPE, kind="completions"),
    Case("prompt an object", {"prompt": {"text": "hi"}}, "prompt", TYPE, kind="completions"),
    Case("prompt, negative token", {"prompt": [1, -1]}, "prompt[1]", "integer_below_min_value", kind="completions"),
    Case("completions logprobs 6", {"logprobs": 6}, "logprobs", "integer_above_max_value", kind="completions"),
    Case("completions logprobs true", {"logprobs": True}, "logprobs", TYPE, kind="completions"),
    Case("best_of below n", {"best_of": 1, "n": 2}, "best_of", VALUE, kind="completions", in_schema=False),
    Case("best_of 21", {"best_of": 21}, "best_of", "integer_above_max_value", kind="completions"),
    Case("echo a string", {"echo": "yes"}, "echo", TYPE, kind="completions"),
    Case("suffix a number", {"suffix": 5}, "suffix", TYPE, kind="completions"),
    # not an object at all
    Case("a JSON array", raw=b"[]", code=TYPE),
    Case("a JSON string", raw=b'"hi"', code=TYPE),
]

VENDOR = {"top_k": 40, "min_p": 0.05, "ignore_eos": True, "repetition_penalty": 1.1,
          "chat_template_kwargs": {"enable_thinking": False}, "guided_json": {"type": "object"}}
GOOD = [
    Case("minimal"),
    Case("/chat without model", kind="simple"),
    Case("/chat, stream", {"stream": True, "model": "m"}, kind="simple"),
    Case("vendor fields", VENDOR),
    Case("every sampling field at its edges", {
        "temperature": 2, "top_p": 0, "n": 128, "stop": list("abcd"), "seed": -1, "max_tokens": 1,
        "max_completion_tokens": 1, "presence_penalty": -2, "frequency_penalty": 2.0, "user": "u-1",
        "logit_bias": {"50256": -100, "11": 100}, "logprobs": True, "top_logprobs": 20, "parallel_tool_calls": False,
        "metadata": {f"k{i}": "v" * 512 for i in range(16)}, "response_format": {"type": "json_object"}}),
    Case("nulls for optional fields", {
        "temperature": None, "top_p": None, "n": None, "stop": None, "seed": None, "max_tokens": None,
        "stream": None, "stream_options": None, "logprobs": None, "top_logprobs": None, "tools": None,
        "tool_choice": None, "response_format": None, "logit_bias": None, "metadata": None}),
    Case("a stop string", {"stop": "\n\n"}),
    Case("integer temperature", {"temperature": 1}),
    Case("stream with usage", {"stream": True, "stream_options": {"include_usage": True, "vendor_flag": 1}}),
    Case("stream false, no options", {"stream": False}),
    Case("text format", {"response_format": {"type": "text"}}),
    Case("json_schema format", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "weather-v2", "description": "d", "strict": True,
        "schema": {"type": "object", "properties": {"t": {"type": "number"}}}}}}),
    Case("every role", {"messages": [
        {"role": "system", "content": "Be brief.", "name": "sys"}, {"role": "developer", "content": "Be kind."},
        {"role": "user", "content": "Weather?", "name": "ana"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
        {"role": "function", "name": "f", "content": None},
        {"role": "assistant", "refusal": "I can't."}, {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "Thanks", "cache_control": {"type": "ephemeral"}}]}),
    Case("content parts, known and not", one({"role": "user", "content": [
        {"type": "text", "text": "What is in it?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}}]})),
    Case("parts in system and tool messages", {"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "sunny"}]}]}),
    Case("tools and every tool_choice", {"tools": [
        tool({"name": "get_weather", "description": "d", "parameters": {"type": "object"}, "strict": True}),
        tool({"name": "a" * 64}, vendor_field=1)], "tool_choice": "required"}),
    *[Case(f"tool_choice {choice}", {"tools": [tool()], "tool_choice": choice}) for choice in ("none", "auto")],
    Case("named tool_choice", {"tools": [tool()], "tool_choice": {"type": "function",
                                                                   "function": {"name": "get_weather"}}}),
    Case("tools and formats of other types pass as sent", {
        "tools": [tool(), {"type": "custom", "custom": {"name": "sql", "format": {"type": "grammar"}}}],
        "response_format": {"type": "structural_tag", "structures": [], "triggers": ["<tool>"]}}),
    Case("a prompt string", kind="completions"),
    Case("an empty prompt string", {"prompt": ""}, kind="completions"),
    Case("prompt strings", {"prompt": ["a", "b"]}, kind="completions"),
    Case("prompt tokens", {"prompt": [1, 2, 50256]}, kind="completions"),
    Case("prompt token lists", {"prompt": [[1, 2], [3]]}, kind="completions"),
    Case("completions fields", {"logprobs": 5, "best_of": 3, "n": 2, "echo": True, "suffix": "!", "stop": ".",
                                "stream": True, "stream_options": {"include_usage": False}, **VENDOR},
         kind="completions"),
    Case("completions logprobs 0", {"logprobs": 0}, kind="completions"),
]


def parse(case: Case) -> dict[str, Any]:
    return parse_body(ADAPTERS[case.kind], case.bytes(), REQUIRED[case.kind])


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.name)
def test_a_bad_field_is_named(case: Case) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse(case)
    error = raised.value
    assert (error.param, error.code, error.status) == (case.param, case.code, 400), error.message
    if case.param:  # the message names the field and says what is allowed
        assert f"'{case.param}'" in error.message, error.message


@pytest.mark.parametrize("case", GOOD, ids=lambda c: c.name)
def test_a_good_body_comes_out_as_it_went_in(case: Case) -> None:
    assert parse(case) == case.body()


SECRET = "Sk-Live-7f3A9c"


@pytest.mark.parametrize("fields", [
    one({"role": SECRET, "content": "hi"}), one({"role": "user", "content": {"text": SECRET}}),
    one({"role": "user", "content": [{"type": "text", "text": [SECRET]}]}), {"messages": [SECRET]},
    {"stream": SECRET}, {"temperature": SECRET}, {"tool_choice": SECRET}, {"stop": [SECRET] * 5},
    {"tools": [tool({"name": SECRET + " x"})]}, {"tools": [tool(SECRET)]}, {"response_format": {"type": [SECRET]}},
    {"logit_bias": {SECRET: 1}}, {"metadata": {SECRET * 9: "v"}}, {"metadata": {"k": SECRET * 60}},
    {"tools": [tool()], "tool_choice": {"type": "function", "function": {"name": SECRET}}},
    {"model": [SECRET]}, {"user": {"id": SECRET}}, {"role": "user", "messages": [{"role": "bot " + SECRET}]},
], ids=range(18))
def test_no_error_echoes_what_the_client_sent(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse(Case("secret", fields))
    error = raised.value
    assert SECRET not in error.envelope().decode() and SECRET.lower() not in error.envelope().decode().lower()


def test_a_short_enum_word_is_shown() -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse(Case("bot", one({"role": "bot", "content": "hi"})))
    assert "'bot'" in raised.value.message and "'assistant'" in raised.value.message


@pytest.mark.parametrize("case", [c for c in BAD + GOOD if c.in_schema and c.raw is None], ids=lambda c: c.name)
def test_the_published_schema_says_what_is_enforced(case: Case) -> None:
    schema = ADAPTERS[case.kind].json_schema()
    valid = jsonschema.Draft202012Validator(schema).is_valid(case.body())
    assert valid == (case.code is None), "the JSON Schema and the validator disagree"


def test_a_batch_line_or_async_job_is_checked_the_same() -> None:
    for case in (c for c in BAD if c.kind in ("chat", "completions")):
        with pytest.raises(InvalidRequest) as raised:
            read_call(case.kind, case.bytes(), Limits())
        assert (raised.value.param, raised.value.code) == (case.param, case.code), case.name


async def test_the_front_door_answers_400_and_calls_nobody() -> None:
    async with gateway(CONFIG) as gw:
        for case in BAD:
            r = await gw.client.post(PATHS[case.kind], content=case.bytes(),
                                     headers={"content-type": "application/json"})
            assert r.status_code == 400, (case.name, r.text)
            error = r.json()["error"]
            assert (error["param"], error["code"], error["type"]) == (case.param, case.code, "invalid_request_error")
        assert gw.fake("a").calls == []


async def test_the_front_door_passes_good_bodies_on_unchanged() -> None:
    async with gateway(CONFIG) as gw:
        gw.fake("a").script(then=reply("{}"))  # JSON: the structured-output policy checks json_object replies
        for case in GOOD:
            sent = case.body()
            r = await gw.client.post(PATHS[case.kind], json=sent)
            assert r.status_code == 200, (case.name, r.text)
            received = gw.fake("a").calls[-1]
            if case.kind == "simple":
                sent = {"model": "m", **sent}  # /chat fills in the first model
            assert received == sent, case.name


# Any JSON, with the keys the schemas know at every level, so that the fuzz reaches inside them.
KEYS = st.sampled_from(sorted({
    *BASES["chat"], "stream", "stream_options", "include_usage", "temperature", "n", "stop", "seed", "tools",
    "tool_choice", "response_format", "logprobs", "top_logprobs", "metadata", "logit_bias", "max_tokens", "prompt",
    "best_of", "role", "content", "type", "text", "image_url", "url", "tool_calls", "tool_call_id", "function",
    "name", "arguments", "parameters", "json_schema", "schema", "strict", "top_k"}))
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8) | st.sampled_from(["user", "assistant", "tool", "text", "image_url", "json_schema"]),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(KEYS | st.text(max_size=4), inner, max_size=5),
    max_leaves=25,
)


@PROPERTY
@given(kind=st.sampled_from(sorted(BASES)), fields=st.dictionaries(KEYS, JSON, max_size=4))
def test_any_json_is_a_request_or_a_400_never_a_crash(kind: str, fields: dict[str, Any]) -> None:
    body = json.dumps({**BASES[kind], **fields}).encode()  # the stdlib writes integers of any size
    try:
        request = parse_body(ADAPTERS[kind], body, REQUIRED[kind])
    except InvalidRequest as error:
        assert error.status == 400 and error.code and isinstance(error.param, str | None)
        return
    orjson.dumps(request)  # what the gateway writes on to the upstream and into cache keys
    prompt_size(Call("completions" if kind == "completions" else "chat", request))
