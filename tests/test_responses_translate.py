"""The Responses translation as pure functions: recorded chat answers and streams in, Responses out.

Every event and response object is also checked against the openai SDK's own types (pydantic
validation of the required fields), so a misspelt field fails here, not in a client.
"""

from __future__ import annotations

import json
import typing
from typing import Any

import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from tokenway.errors import UpstreamTimeout
from tokenway.protocol import SSE_DONE, SSE_HEARTBEAT, sse_event
from tokenway.translate.responses_in import ResponseDraft, chat_body, chat_messages, input_items
from tokenway.translate.responses_out import ResponsesStream, from_chat

# Each event type's SDK class, by its ``type`` literal (the union, validated whole, reports every member).
EVENTS = {typing.get_args(cls.model_fields["type"].annotation)[0]: cls
          for cls in typing.get_args(typing.get_args(ResponseStreamEvent)[0])}
ARGUMENTS = json.dumps({"query": "tokenway \"gateway\"", "filters": {"year": [2025, 2026]}, "deep": True})


def _ids(prefix: str) -> Any:
    count = iter(range(1000))
    return lambda: f"{prefix}{next(count)}"


def _draft(**request: Any) -> ResponseDraft:
    request = {"model": "m", "input": "hi", **request}
    return ResponseDraft("resp_1", "m", request, input_items(request), created_at=1)


def _stream(draft: ResponseDraft | None = None) -> ResponsesStream:
    return ResponsesStream(draft or _draft(stream=True), _ids("msg_"), _ids("fc_"))


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, int] | None = None
           ) -> bytes:
    chunk: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                             "choices": [] if delta is None else [
                                 {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if usage is not None:
        chunk["usage"] = usage
    return sse_event(chunk)


def _events(data: bytes) -> list[dict[str, Any]]:
    """The events of a Responses stream, each checked: its ``event:`` line names its type, its data is the SDK's."""
    events = []
    for raw in data.decode().split("\n\n"):
        if not raw:
            continue
        kind, payload = raw.split("\n")
        event = json.loads(payload.removeprefix("data: "))
        assert kind == f"event: {event['type']}"
        EVENTS[event["type"]].model_validate(event)
        events.append(event)
    return events


USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}


def test_a_text_stream_becomes_the_responses_events_in_order() -> None:
    translation = _stream()
    blocks = [_chunk({"role": "assistant", "content": ""}), _chunk({"content": "Hel"}), SSE_HEARTBEAT,
              _chunk({"content": "lo"}) + _chunk({}, "stop"), _chunk(usage=USAGE) + SSE_DONE]
    outputs = [translation.feed(block) for block in blocks]
    assert outputs[2] == SSE_HEARTBEAT  # a heartbeat comment goes on as it is
    events = _events(b"".join(out for out in outputs if out != SSE_HEARTBEAT))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(10))
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    assert events[6]["text"] == "Hello" and events[8]["item"]["content"][0]["text"] == "Hello"
    done = Response.model_validate(events[-1]["response"])
    assert done.output_text == "Hello" and done.status == "completed"
    assert done.usage is not None and (done.usage.input_tokens, done.usage.output_tokens) == (11, 5)
    assert b"chat.completion.chunk" not in b"".join(outputs)  # the usage chunk never reaches the client
    assert translation.response is not None and translation.response["id"] == "resp_1"


def test_tool_call_arguments_split_over_many_chunks_arrive_whole() -> None:
    translation = _stream()
    pieces = [ARGUMENTS[i:i + 3] for i in range(0, len(ARGUMENTS), 3)]
    blocks = [_chunk({"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "search", "arguments": ""}}]})]
    blocks += [_chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}) for piece in pieces]
    blocks += [_chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                       "function": {"name": "fetch", "arguments": '{"url"'}}]}),
               _chunk({"tool_calls": [{"index": 1, "function": {"arguments": ': "x"}'}}]}),
               _chunk({}, "tool_calls"), _chunk(usage=USAGE), SSE_DONE]
    events = _events(b"".join(translation.feed(block) for block in blocks))
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"
              and e["output_index"] == 0]
    assert len(deltas) == len(pieces) and "".join(deltas) == ARGUMENTS
    finished = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [(e["name"], e["arguments"]) for e in finished] == [("search", ARGUMENTS), ("fetch", '{"url": "x"}')]
    output = Response.model_validate(events[-1]["response"]).output
    assert [(item.type, item.call_id, item.arguments) for item in output] == [  # type: ignore[union-attr]
        ("function_call", "call_a", ARGUMENTS), ("function_call", "call_b", '{"url": "x"}')]
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.added"] == [0, 1]


def test_text_then_a_tool_call_are_two_items() -> None:
    translation = _stream()
    blocks = [_chunk({"content": "Let me look."}),
              _chunk({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "search", "arguments": "{}"}}]}),
              _chunk({}, "tool_calls"), SSE_DONE]
    events = _events(b"".join(translation.feed(block) for block in blocks))
    output = events[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["message", "function_call"]
    done_items = [e["output_index"] for e in events if e["type"] == "response.output_item.done"]
    assert done_items == [0, 1]


def test_a_length_cut_is_an_incomplete_response() -> None:
    translation = _stream(_draft(stream=True, max_output_tokens=2))
    events = _events(b"".join(translation.feed(b) for b in [_chunk({"content": "Hi th"}), _chunk({}, "length"),
                                                          SSE_DONE]))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_an_error_mid_stream_ends_it_with_error_and_response_failed() -> None:
    translation = _stream()
    started = translation.feed(_chunk({"content": "Par"}))
    ended = translation.error(UpstreamTimeout("The backend sent nothing for 30s in the middle of the stream."))
    events = _events(started + ended)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert "30s" in events[-2]["message"]
    assert events[-1]["response"]["status"] == "failed" and events[-1]["response"]["error"]["message"]
    assert translation.response is None  # nothing to store


def test_an_error_before_any_block_still_opens_the_response() -> None:
    events = _events(_stream().error(UpstreamTimeout("No first token within 60s.")))
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "error", "response.failed"]


def test_a_chat_body_becomes_a_response_object() -> None:
    chat = {"id": "c", "object": "chat.completion", "created": 1, "model": "upstream", "usage": USAGE,
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Searching.", "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "search", "arguments": ARGUMENTS}}]}}]}
    draft = _draft(instructions="Be brief.", tools=[{"type": "function", "name": "search"}], metadata={"a": "b"})
    response = from_chat(draft, orjson.dumps(chat), _ids("msg_"), _ids("fc_"))
    parsed = Response.model_validate(response)
    assert parsed.output_text == "Searching." and parsed.model == "m" and parsed.instructions == "Be brief."
    assert parsed.output[1].type == "function_call" and parsed.output[1].arguments == ARGUMENTS
    assert parsed.usage is not None and parsed.usage.total_tokens == 16
    assert response["metadata"] == {"a": "b"} and response["tools"] == [{"type": "function", "name": "search"}]
    assert "output_text" not in response  # the SDK's convenience, not on the wire


def test_items_become_chat_messages() -> None:
    request = {"model": "m", "instructions": "Sys.", "input": [
        {"role": "developer", "content": [{"type": "input_text", "text": "Dev."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "Look: "},
                                     {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Calling.", "annotations": []}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{\"a\": 1}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
    ], "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True}],
        "tool_choice": {"type": "function", "name": "f"}, "text": {"format": {"type": "json_object"}},
        "max_output_tokens": 9, "parallel_tool_calls": False, "store": False, "metadata": {"k": "v"},
        "stream": True}
    body = chat_body(request, input_items(request))
    assert body["messages"] == [
        {"role": "system", "content": "Sys."},
        {"role": "developer", "content": "Dev."},
        {"role": "user", "content": [{"type": "text", "text": "Look: "},
                                     {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]},
        {"role": "assistant", "content": "Calling.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{\"a\": 1}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]
    assert body["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"},
                                                               "strict": True}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert body["response_format"] == {"type": "json_object"} and body["max_tokens"] == 9
    assert body["parallel_tool_calls"] is False and body["stream_options"] == {"include_usage": True}
    assert not {"store", "metadata", "input", "instructions", "text", "max_output_tokens"} & body.keys()


@pytest.mark.parametrize("content", [[{"type": "refusal", "refusal": "No."}]])
def test_an_assistant_refusal_stays_a_refusal(content: list[dict[str, Any]]) -> None:
    assert chat_messages([{"type": "message", "role": "assistant", "content": content}]) == [
        {"role": "assistant", "content": None, "refusal": "No."}]


def test_an_error_chunk_inside_the_chat_stream_ends_the_response_as_failed() -> None:
    # As the structured-output policy ends a stream whose reply broke its schema: an error chunk, then [DONE].
    translation = _stream()
    error = sse_event({"error": {"message": "The reply did not match the schema.", "type": "api_error",
                                 "param": None, "code": "structured_output_invalid"}})
    events = _events(translation.feed(_chunk({"content": "{oops"})) + translation.feed(error + SSE_DONE))
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["code"] == "structured_output_invalid"
    assert translation.response is None and translation.feed(SSE_DONE) == b""
