"""Anthropic's Messages API translated to and from OpenAI chat, in process: the request, the reply, recorded
chat streams in and Anthropic's events out, the errors; and the in-process gateway for what crosses the
data plane (a stream failing half-way, the envelope of a refused call)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from tests.inprocess import WORDS, fail, gateway, http_error
from tokenway.api.messages import MessagesWire, count_tokens
from tokenway.config import Limits
from tokenway.errors import (
    AuthenticationFailed,
    BudgetExceeded,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)
from tokenway.protocol import SSE_DONE, SSE_HEARTBEAT, sse_event
from tokenway.translate.anthropic_out import MessageEvents, message_body

WIRE = MessagesWire()
HI = [{"role": "user", "content": "hi"}]


def read(**request: Any) -> dict[str, Any]:
    return WIRE.read(orjson.dumps({"model": "m", "max_tokens": 50, "messages": HI, **request}), Limits()).body


def refused(**request: Any) -> str:
    """The message of the 400 a request gets (its envelope checked on the way)."""
    body = {"model": "m", "max_tokens": 50, "messages": HI, **request}
    with pytest.raises(InvalidRequest) as error:
        WIRE.read(orjson.dumps({k: v for k, v in body.items() if v is not None}), Limits())
    status, envelope = WIRE.error(error.value)
    answer = orjson.loads(envelope)
    assert status == 400 and answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
    return str(answer["error"]["message"])


# ---- the request ------------------------------------------------------------------------------------


def test_a_conversation_with_tools_becomes_chat_messages_in_order() -> None:
    body = read(system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}], messages=[
        {"role": "user", "content": [{"type": "text", "text": "Weather? "}, {"type": "image", "source": {
            "type": "base64", "media_type": "image/png", "data": "iVBO"}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "the user wants weather", "signature": "sig"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "t2", "name": "weather", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": [
                {"type": "text", "text": "sunny"}, {"type": "image", "source": {"type": "url", "url": "http://x/a.png"}}]},
            {"type": "tool_result", "tool_use_id": "t2", "content": "no city", "is_error": True},
            {"type": "text", "text": "And tomorrow?"}]},
    ])
    assert body["messages"] == [
        {"role": "system", "content": "Be brief.\n\nUse tools."},
        {"role": "user", "content": [{"type": "text", "text": "Weather? "},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [  # the thinking block is dropped
            {"id": "t1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
            {"id": "t2", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]},
        {"role": "tool", "tool_call_id": "t2", "content": "Error: no city"},
        {"role": "user", "content": "And tomorrow?"},
    ]


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none"),
    ({"type": "tool", "name": "weather"}, {"type": "function", "function": {"name": "weather"}}),
])
def test_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    tools = [{"name": "weather", "description": "Weather.", "input_schema": {"type": "object"}}]
    body = read(tools=tools, tool_choice=choice)
    assert body["tool_choice"] == expected
    assert body["tools"] == [{"type": "function", "function": {
        "name": "weather", "description": "Weather.", "parameters": {"type": "object"}}}]
    assert "parallel_tool_calls" not in body
    assert read(tools=tools, tool_choice={**choice, "disable_parallel_tool_use": True})["parallel_tool_calls"] is False


def test_sampling_stops_user_and_stream_options() -> None:
    body = read(temperature=0.2, top_p=0.9, top_k=40, stop_sequences=["\n\nHuman:"], metadata={"user_id": "u1"},
                stream=True, thinking={"type": "enabled", "budget_tokens": 2048}, service_tier="auto",
                output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}})
    assert body == {"model": "m", "messages": HI, "max_tokens": 50, "temperature": 0.2, "top_p": 0.9, "top_k": 40,
                    "stop": ["\n\nHuman:"], "user": "u1", "stream": True, "stream_options": {"include_usage": True},
                    "response_format": {"type": "json_schema",
                                        "json_schema": {"name": "output", "schema": {"type": "object"}}}}


@pytest.mark.parametrize(("request_fields", "named"), [
    ({"max_tokens": None}, "'max_tokens'"),
    ({"stream_options": {"include_usage": True}}, "'stream_options'"),  # chat's, not Anthropic's: refused
    ({"temperature": 1.5}, "'temperature'"),
    ({"messages": [{"role": "system", "content": "x"}]}, "'messages[0].role'"),
    ({"messages": [{"role": "user", "content": [{"type": "document"}]}]}, "'messages[0].content[0].type'"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}]}]},
     "'messages[0].content[0].type'"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "x"}}]}]},
     "'messages[0].content[0].source.media_type'"),
    ({"tools": [{"name": "a b", "input_schema": {}}]}, "'tools[0].name'"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "'tools[0]"),
    ({"tool_choice": {"type": "tool", "name": "nope"}}, "'tool_choice.name'"),
    ({"messages": []}, "'messages'"),
])
def test_a_bad_request_is_refused_naming_the_field(request_fields: dict[str, Any], named: str) -> None:
    assert named in refused(**request_fields)


def test_count_tokens_is_the_gateways_estimate() -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "x" * 40}], "system": "y" * 8}
    assert count_tokens(request) == (40 + 8) // 4 + 4 * 2 + 3
    tool = {"name": "t", "input_schema": {"type": "object"}}
    assert count_tokens({**request, "tools": [tool]}) == -(-(48 + len(orjson.dumps(tool))) // 4) + 11


# ---- the reply --------------------------------------------------------------------------------------


def completion(message: dict[str, Any], finish: str, **choice: Any) -> bytes:
    return orjson.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "up", "choices": [
        {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish, **choice}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 8}}})


def test_a_reply_with_text_and_tool_calls() -> None:
    chat = completion({"content": "On it.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "clock", "arguments": ""}}]}, "tool_calls")
    assert orjson.loads(message_body(chat, "msg_1", "m", None)) == {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [
            {"type": "text", "text": "On it."},
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "call_2", "name": "clock", "input": {}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 5, "cache_read_input_tokens": 8}}


@pytest.mark.parametrize(("finish", "extra", "stops", "reason", "sequence"), [
    ("stop", {}, None, "end_turn", None),
    ("length", {}, None, "max_tokens", None),
    ("stop", {"stop_reason": "END"}, ["END"], "stop_sequence", "END"),  # vLLM names the stop that matched
    ("stop", {"matched_stop": "##"}, ["##", "END"], "stop_sequence", "##"),  # SGLang too
    ("stop", {"stop_reason": 2}, ["END"], "end_turn", None),  # vLLM's stop token id: a natural end
    ("content_filter", {}, None, "refusal", None),
])
def test_stop_reasons(finish: str, extra: dict[str, Any], stops: list[str] | None, reason: str,
                      sequence: str | None) -> None:
    answer = orjson.loads(message_body(completion({"content": "x"}, finish, **extra), "msg_1", "m", stops))
    assert (answer["stop_reason"], answer["stop_sequence"]) == (reason, sequence)


def test_tool_arguments_that_are_no_json_object_are_a_backend_error() -> None:
    chat = completion({"content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"city": '}}]}, "tool_calls")
    with pytest.raises(UpstreamError):
        message_body(chat, "msg_1", "m", None)


# ---- streams ----------------------------------------------------------------------------------------


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return sse_event({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up", "choices": choices,
                      **extra})


def events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each event; every event's name is its data's type."""
    out = []
    for text in data.decode().split("\n\n"):
        if text:
            name, payload = text.split("\n")
            assert name.startswith("event: ") and payload.startswith("data: ")
            out.append((name[7:], json.loads(payload[6:])))
            assert out[-1][0] == out[-1][1]["type"]
    return out


def assembled(stream: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The message a client builds from the events (as the SDK's accumulator does), checking their order."""
    names = [name for name, _ in stream]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    message = stream[0][1]["message"]
    json_parts: dict[int, str] = {}
    open_block = None
    for name, data in stream[2:-2]:
        if name == "content_block_start":
            assert open_block is None and data["index"] == len(message["content"])
            open_block = data["index"]
            message["content"].append(data["content_block"])
        elif name == "content_block_delta":
            assert data["index"] == open_block
            delta = data["delta"]
            if delta["type"] == "text_delta":
                message["content"][open_block]["text"] += delta["text"]
            else:
                json_parts[open_block] = json_parts.get(open_block, "") + delta["partial_json"]
        else:
            assert name == "content_block_stop" and data["index"] == open_block
            open_block = None
    for index, text in json_parts.items():
        message["content"][index]["input"] = json.loads(text)
    message.update(stream[-2][1]["delta"])
    message["usage"].update(stream[-2][1]["usage"])
    return message


def translate(blocks: list[bytes], stops: list[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    translation = MessageEvents("msg_t", "m", stops)
    return events(b"".join(translation.feed(block) for block in blocks))


def split_tool_stream(arguments: list[str], piece: int) -> list[bytes]:
    """A recorded OpenAI stream: text, then a tool call per ``arguments``, each sent ``piece`` characters at
    a time, several chunks to a block at times (as a relay hands them on)."""
    blocks = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Let me "}) + chunk({"content": "see."})]
    for i, text in enumerate(arguments):
        blocks.append(chunk({"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function",
                                             "function": {"name": f"tool{i}", "arguments": ""}}]}))
        pieces = [chunk({"tool_calls": [{"index": i, "function": {"arguments": text[j:j + piece]}}]})
                  for j in range(0, len(text), piece)]
        blocks += [b"".join(pieces[j:j + 2]) for j in range(0, len(pieces), 2)]
    return [*blocks, chunk({}, "tool_calls"), chunk(usage={"prompt_tokens": 9, "completion_tokens": 30}) + SSE_DONE]


@pytest.mark.parametrize("piece", [1, 4, 1000])
def test_a_stream_of_text_and_split_tool_calls_becomes_whole_blocks(piece: int) -> None:
    arguments = [json.dumps({"city": "Paris", "days": [1, 2], "note": "a \"quoted\" word, é"}), json.dumps({})]
    message = assembled(translate(split_tool_stream(arguments, piece)))
    assert message["content"] == [
        {"type": "text", "text": "Let me see."},
        {"type": "tool_use", "id": "call_0", "name": "tool0", "input": json.loads(arguments[0])},
        {"type": "tool_use", "id": "call_1", "name": "tool1", "input": {}}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("tool_use", None)
    assert message["usage"] == {"input_tokens": 9, "output_tokens": 30}


def test_a_stream_without_usage_counts_its_pieces_and_names_the_matched_stop() -> None:
    matched = sse_event({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up", "choices": [
        {"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "END"}]})  # vLLM names the stop
    blocks = [*(chunk({"content": word}) for word in WORDS), matched, SSE_DONE]
    message = assembled(translate(blocks, ["END"]))
    assert message["content"] == [{"type": "text", "text": "".join(WORDS)}]
    assert message["usage"]["output_tokens"] == len(WORDS)
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")


def test_whole_tool_calls_without_indexes_each_get_a_block() -> None:
    # Some backends (Ollama's translation, a few servers) send each call whole, with no index.
    calls = [{"id": f"c{i}", "type": "function", "function": {"name": "f", "arguments": f'{{"n": {i}}}'}}
             for i in range(3)]
    message = assembled(translate([chunk({"tool_calls": calls}), chunk({}, "tool_calls"), SSE_DONE]))
    assert [(b["id"], b["input"]) for b in message["content"]] == [("c0", {"n": 0}), ("c1", {"n": 1}), ("c2", {"n": 2})]


def test_a_stream_with_no_content_still_makes_a_whole_message() -> None:
    message = assembled(translate([chunk({"role": "assistant"}), chunk({}, "length"), SSE_DONE]))
    assert message["content"] == [] and message["stop_reason"] == "max_tokens"


def test_interleaved_tool_arguments_are_an_error_not_lost_arguments() -> None:
    translation = MessageEvents("msg_t", "m", None)
    translation.feed(chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}]}))
    translation.feed(chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{"}}]}))
    with pytest.raises(UpstreamError):
        translation.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}))


def test_errors_end_the_stream_as_an_error_event() -> None:
    translation = MessageEvents("msg_t", "m", None)
    started = events(translation.feed(chunk({"content": "Hel"})))
    assert [name for name, _ in started] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert translation.feed(SSE_HEARTBEAT) == b""
    ended = events(translation.error(UpstreamTimeout("The backend sent nothing for 30s.")))
    assert ended == [("error", {"type": "error", "error": {"type": "api_error",
                                                           "message": "The backend sent nothing for 30s."}})]
    assert translation.feed(SSE_DONE) == b""  # nothing after the error
    relayed = MessageEvents("msg_t", "m", None)
    out = events(relayed.feed(sse_event({"error": {"message": "slow down", "type": "rate_limit_error"}})))
    assert out[-1] == ("error", {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})


@pytest.mark.parametrize(("error", "status", "kind"), [
    (InvalidRequest("Bad.", param="messages[0]"), 400, "invalid_request_error"),
    (AuthenticationFailed("No key."), 401, "authentication_error"),
    (PermissionDenied("Not this model."), 403, "permission_error"),
    (ModelNotFound("No such model."), 404, "not_found_error"),
    (PayloadTooLarge("Too big."), 413, "request_too_large"),
    (BudgetExceeded("Over budget."), 429, "rate_limit_error"),
    (UpstreamError("Slow down.", upstream_status=429), 429, "rate_limit_error"),
    (UpstreamError("Broke."), 502, "api_error"),
    (Overloaded("Busy."), 503, "overloaded_error"),
    (UpstreamTimeout("Slow."), 504, "api_error"),
])
def test_error_types_by_status(error: GatewayError, status: int, kind: str) -> None:
    got_status, body = WIRE.error(error)
    answer = orjson.loads(body)
    assert (got_status, answer["type"], answer["error"]["type"]) == (status, "error", kind)
    assert answer["error"]["message"].startswith(error.message)
    if error.param:
        assert f"'{error.param}'" in answer["error"]["message"]


def test_a_backends_refusal_says_what_the_backend_said() -> None:
    rejected = UpstreamRejected("The backend answered 400.", status=400, body=orjson.dumps(
        {"error": {"message": "context too long", "type": "invalid_request_error"}}))
    assert "context too long" in orjson.loads(WIRE.error(rejected)[1])["error"]["message"]


# ---- through the in-process gateway -----------------------------------------------------------------

CONFIG = "models: [{name: m, deployments: [{provider: fake, name: a}]}]"


async def test_in_process_reply_stream_and_mid_stream_failure() -> None:
    async with gateway(CONFIG) as gw:
        request = {"model": "m", "max_tokens": 20, "messages": HI}
        answer = await gw.clock.run(gw.client.post("/v1/messages", json=request))
        assert answer.status_code == 200
        assert answer.json()["content"] == [{"type": "text", "text": "".join(WORDS)}]
        assert gw.fake("a").calls[-1]["messages"] == HI

        streamed = await gw.clock.run(gw.client.post("/v1/messages", json={**request, "stream": True}))
        assert assembled(events(streamed.content))["content"] == [{"type": "text", "text": "".join(WORDS)}]

        gw.fake("a").script(fail(http_error(502), after=2))
        broken = await gw.clock.run(gw.client.post("/v1/messages", json={**request, "stream": True}))
        got = events(broken.content)
        assert [name for name, _ in got][-1] == "error" and got[-1][1]["error"]["type"] == "api_error"
        assert "".join(d["delta"]["text"] for n, d in got if n == "content_block_delta") == "".join(WORDS[:2])

        bad = await gw.clock.run(gw.client.post("/v1/messages", json={"model": "m", "messages": HI}))
        assert bad.status_code == 400 and bad.json()["error"]["message"] == "Missing required parameter: 'max_tokens'."


async def test_in_process_a_call_without_a_key_is_refused_before_its_body_is_read(
    capfd: pytest.CaptureFixture[str],
) -> None:
    async with gateway(CONFIG, master_key="sk-master") as gw:
        answer = await gw.clock.run(gw.client.post("/v1/messages", content=b"not json"))
        assert answer.status_code == 401 and answer.json()["error"]["type"] == "authentication_error"
        keyed = await gw.clock.run(gw.client.post("/v1/messages/count_tokens", headers={"x-api-key": "sk-master"},
                                                  json={"model": "m", "messages": HI}))
        assert keyed.status_code == 200 and keyed.json() == {"input_tokens": 1 + 4 + 3}
        assert keyed.headers["x-request-id"].startswith("req_")
        bad = await gw.clock.run(gw.client.post("/v1/messages/count_tokens", headers={"x-api-key": "sk-master"},
                                                json={"model": "m", "messages": HI, "max_tokens": 5}))
        assert bad.status_code == 400 and bad.json()["error"] == {  # count_tokens takes no max_tokens
            "type": "invalid_request_error", "message": "Invalid value for 'max_tokens': Extra inputs are not "
                                                        "permitted."}
        unknown = await gw.clock.run(gw.client.post("/v1/messages/count_tokens", headers={"x-api-key": "sk-master"},
                                                    json={"model": "nope", "messages": HI}))
        assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"
        wrong = await gw.clock.run(gw.client.get("/v1/messages/count_tokens", headers={"x-api-key": "sk-master"}))
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if '"event":"request"' in line]
    counted = [(line["endpoint"], line["status"], line["request_id"]) for line in lines
               if line["endpoint"] == "count_tokens"]
    assert [status for _, status, _ in counted] == [200, 400, 404]  # one line per call
    assert counted[0][2] == keyed.headers["x-request-id"]
