"""Structured output in process: the reply contract, the schema cache, the policy's edges (pass-through,
deadline, config), and the gateway with scripted providers on the fake clock."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.inprocess import fail, gateway, http_error, reply, sse_data
from tokenway.config import parse_config
from tokenway.context import RequestContext
from tokenway.errors import InvalidRequest
from tokenway.observability.metrics import Metrics
from tokenway.policies.structured_output import StructuredOutput, StructuredOutputInvalid
from tokenway.protocol import SSE_DONE, Usage
from tokenway.providers.base import Answer, Call, Completion, Stream
from tokenway.validation.replies import Contract, retry_messages
from tokenway.validation.schemas import SchemaCache

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {
             "type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}}},
         {"type": "function", "function": {"name": "ping"}},
         {"type": "custom", "custom": {"name": "shell"}}]
YAML = """
models:
  - name: m
    deployments: [{provider: fake, name: a}]
  - name: off
    structured_output: {enabled: false}
    deployments: [{provider: fake, name: b}]
"""


def _contract(**body: Any) -> Contract:
    contract = Contract.of({"model": "m", "messages": [], **body}, SchemaCache())
    assert contract is not None
    return contract


def _reply(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"choices": [{"index": i, "message": {"role": "assistant", **m}} for i, m in enumerate(messages)]}


def test_every_choice_is_checked_and_a_refusal_is_an_answer() -> None:
    contract = _contract(response_format={"type": "json_object"}, n=3)
    problem = contract.check(_reply({"content": "{}"}, {"refusal": "I can't help with that.", "content": None},
                                    {"content": "[1, 2]"}))
    assert problem is not None and problem.where == "choices[2].message.content"
    assert problem.kind == "schema" and "a JSON array, not the JSON object asked for" in problem.detail
    assert contract.check(_reply({"content": '{"a": 1}'}, {"refusal": "No.", "content": None})) is None


def test_schema_problems_name_the_path_and_empty_replies_are_problems() -> None:
    contract = _contract(response_format=SCHEMA_FORMAT)
    problem = contract.check(_reply({"content": '{"name": "Ada"}'}))
    assert problem is not None and problem.kind == "schema"
    assert problem.detail == "at $: 'age' is a required property"
    empty = contract.check(_reply({"content": "  "}))
    assert empty is not None and empty.kind == "empty"
    note = retry_messages(problem, contract)
    assert note[0] == {"role": "assistant", "content": '{"name": "Ada"}'}
    assert "conforms to the schema 'person'" in note[1]["content"]


def test_tool_calls_are_checked_against_their_declarations() -> None:
    contract = _contract(tools=TOOLS)
    calls = [{"id": "c0", "type": "function", "function": {"name": "ping", "arguments": '{"any": "thing"}'}},
             {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"id": "7"}'}},
             {"id": "c2", "type": "custom", "custom": {"name": "shell", "input": "ls"}}]
    problem = contract.check(_reply({"content": None, "tool_calls": calls}))
    assert problem is not None and problem.kind == "tool_arguments"
    assert problem.where == "choices[0].message.tool_calls[1].function.arguments"
    assert "at $.id: '7' is not of type 'integer'" in problem.detail
    results = retry_messages(problem, contract)[1:]
    assert [r["tool_call_id"] for r in results] == ["c0", "c1", "c2"]  # every call gets its tool result
    assert results[0]["content"].startswith("Not run") and results[1]["content"].startswith("Error")
    calls[1]["function"]["arguments"] = '{"id": 7}'
    assert contract.check(_reply({"content": None, "tool_calls": calls})) is None
    bad_json = [{"id": "x", "type": "function", "function": {"name": "ping", "arguments": "{"}}]
    broken = contract.check(_reply({"content": None, "tool_calls": bad_json}))
    assert broken is not None and broken.kind == "tool_arguments" and "not valid JSON" in broken.detail


def test_a_schema_that_is_not_one_is_the_clients_400_naming_it() -> None:
    with pytest.raises(InvalidRequest) as raised:
        _contract(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "thing"}}})
    assert raised.value.param == "response_format.json_schema.schema" and raised.value.code == "invalid_schema"
    with pytest.raises(InvalidRequest) as raised:
        _contract(tools=[{"type": "function", "function": {"name": "f", "parameters": {"required": "id"}}}])
    assert raised.value.param == "tools[0].function.parameters"


def test_requests_that_ask_nothing_checkable_have_no_contract() -> None:
    cache = SchemaCache()
    assert Contract.of({"response_format": {"type": "text"}}, cache) is None
    assert Contract.of({"tools": [{"type": "custom", "custom": {"name": "shell"}}]}, cache) is None


def test_the_schema_cache_keys_on_canonical_json_and_is_bounded() -> None:
    cache = SchemaCache(size=2)
    first = cache.validator({"type": "object", "required": ["a"]})
    assert cache.validator({"required": ["a"], "type": "object"}) is first  # same schema, keys in another order
    cache.validator({"type": "string"})
    cache.validator({"type": "integer"})
    assert len(cache) == 2
    assert cache.validator({"type": "object", "required": ["a"]}) is not first  # dropped, compiled again


def _policy(yaml: str = YAML) -> StructuredOutput:
    return StructuredOutput(parse_config(yaml), Metrics())


async def test_a_request_without_structured_output_gets_the_very_stream_it_was_given() -> None:
    async def blocks(_: Stream) -> AsyncIterator[bytes]:
        yield SSE_DONE

    stream = Stream(blocks)

    async def upstream(ctx: RequestContext, call: Call) -> Answer:
        return stream

    ctx = RequestContext(request_id="r", endpoint="chat")
    plain = Call("chat", {"model": "m", "messages": [], "stream": True})
    assert await _policy()(ctx, plain, upstream) is stream
    off = Call("chat", {"model": "off", "messages": [], "stream": True, "response_format": {"type": "json_object"}})
    assert await _policy()(ctx, off, upstream) is stream  # the model turned it off
    asked = Call("chat", {"model": "m", "messages": [], "stream": True, "response_format": {"type": "json_object"}})
    assert await _policy()(ctx, asked, upstream) is not stream  # wrapped, to be checked at its end


async def test_retries_stop_at_the_deadline() -> None:
    calls: list[Call] = []

    async def upstream(ctx: RequestContext, call: Call) -> Answer:
        calls.append(call)
        body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "nope"}}]}
        return Completion(orjson.dumps(body), Usage(7, 6))

    ctx = RequestContext(request_id="r", endpoint="chat", deadline=time.perf_counter() - 0.001)
    call = Call("chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                         "response_format": {"type": "json_object"}})
    with pytest.raises(StructuredOutputInvalid) as raised:
        await _policy()(ctx, call, upstream)
    assert "no retry: the request's deadline has passed" in raised.value.message and len(calls) == 1
    assert ctx.usage == Usage(7, 6)  # the call made is billed


def test_the_policy_is_left_out_when_every_model_turns_it_off() -> None:
    config = parse_config(YAML + "structured_output: {enabled: false}\n")
    assert not StructuredOutput.wanted(config)
    assert StructuredOutput.wanted(parse_config(YAML))


async def test_in_process_json_is_retried_then_served() -> None:
    async with gateway(YAML) as gw:
        gw.fake("a").script(reply("Here:", " {}"), reply('{"name": "Ada", ', '"age": 36}'))
        r = await gw.chat(response_format=SCHEMA_FORMAT)
        assert r.status_code == 200, r.text
        assert orjson.loads(r.json()["choices"][0]["message"]["content"]) == {"name": "Ada", "age": 36}
        assert r.json()["usage"]["completion_tokens"] == 2 + 2
        calls = gw.fake("a").calls
        assert len(calls) == 2 and calls[1]["messages"][1] == {"role": "assistant", "content": "Here: {}"}
        assert "not valid JSON (unexpected character" in calls[1]["messages"][2]["content"]


async def test_in_process_a_bad_schema_never_reaches_the_provider() -> None:
    async with gateway(YAML) as gw:
        bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"properties": []}}}
        r = await gw.chat(response_format=bad)
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "response_format.json_schema.schema"
        assert gw.fake("a").calls == []


async def test_a_valid_first_answer_is_passed_on_as_the_upstream_sent_it() -> None:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": '{"a": 1}'}}]}
    answer = Completion(orjson.dumps(body), Usage(7, 6))

    async def upstream(ctx: RequestContext, call: Call) -> Answer:
        return answer

    call = Call("chat", {"model": "m", "messages": [], "response_format": {"type": "json_object"}})
    assert await _policy()(RequestContext(request_id="r", endpoint="chat"), call, upstream) is answer


async def test_the_cache_stores_only_the_answer_that_passed() -> None:
    async with gateway(YAML.replace("  - name: m\n", "  - name: m\n    cache: {enabled: true}\n")) as gw:
        gw.fake("a").script(reply("nope"), reply('{"a": 1}'))
        first = await gw.chat(response_format={"type": "json_object"}, temperature=0)
        again = await gw.chat(response_format={"type": "json_object"}, temperature=0)
        assert first.status_code == again.status_code == 200
        assert again.headers["x-cache"] == "hit"
        assert again.json()["choices"][0]["message"]["content"] == '{"a": 1}'
        assert len(gw.fake("a").calls) == 2  # the invalid reply and its retry; the repeat was a hit


async def test_a_canned_reply_when_nothing_could_answer_is_passed_on_unchecked_even_to_a_buffered_stream() -> None:
    yaml = """
models:
  - name: m
    structured_output: {streams: buffer}
    retry: {attempts: 1}
    degradation: {reply: "Sorry, try again later."}
    deployments: [{provider: fake, name: a}]
"""
    async with gateway(yaml) as gw:
        gw.fake("a").script(then=fail(http_error(503)))
        answer = await gw.chat(response_format={"type": "json_object"})
        streamed = await gw.chat(response_format={"type": "json_object"}, stream=True)
        assert answer.status_code == 200 and answer.headers["x-tokenway-degraded"] == "true"
        assert answer.json()["choices"][0]["message"]["content"] == "Sorry, try again later."
        assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
        events = sse_data(streamed)
        assert events[-1] == "[DONE]"
        assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e.get("choices")) == (
            "Sorry, try again later.")
        assert len(gw.fake("a").calls) == 2  # one call each: a canned reply is not retried
