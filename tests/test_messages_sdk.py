"""/v1/messages with the official ``anthropic`` SDK over real sockets: a real gateway in front of scripted
chat upstreams (tests/fakes.py, and one here that streams recorded chunks with tool arguments split
into many pieces). What the SDK parses is Anthropic's format; what the upstream saw is chat's."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from aiohttp import web

from tests.access_support import MASTER, create_key, gateway
from tests.fakes import WORDS, FakeUpstream
from tests.servers import free_port
from tests.test_stream_billing import (
    NANOS_PER_TOKEN,
    PROMPT,
    PROMPT_ESTIMATE,
    TokenUpstream,
    _committed,
    _config,
    _ledger_row,
)

TEXT = "".join(WORDS)
HI = [{"role": "user", "content": "hi"}]
WEATHER = {"name": "get_weather", "description": "The weather in a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
# A recorded answer, as OpenAI streams it: text, then two tool calls whose arguments come in 3-character pieces.
ARGS = [json.dumps({"city": "Paris", "units": "celsius", "days": [1, 2, 3]}), json.dumps({"city": "Oslo"})]


def _recorded_chunks() -> list[dict[str, Any]]:
    head = {"id": "chatcmpl-r", "object": "chat.completion.chunk", "created": 1, "model": "upstream-model"}
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}, {"content": "Let me "}, {"content": "check."}]
    for i, arguments in enumerate(ARGS):
        deltas.append({"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function",
                                       "function": {"name": "get_weather", "arguments": ""}}]})
        deltas += [{"tool_calls": [{"index": i, "function": {"arguments": arguments[j:j + 3]}}]}
                   for j in range(0, len(arguments), 3)]
    chunks = [{**head, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    chunks.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    chunks.append({**head, "choices": [], "usage": {"prompt_tokens": 31, "completion_tokens": 40, "total_tokens": 71}})
    return chunks


class RecordedUpstream:
    """Streams the recorded chunks (with usage only when asked), records each request body."""

    def __init__(self) -> None:
        self.port = free_port()
        self.seen: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self._stream)
            app.router.add_get("/v1/models", lambda _: web.json_response({"data": [{"id": "upstream-model"}]}))
            runner = web.AppRunner(app)
            self._loop.run_until_complete(runner.setup())
            self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=serve, daemon=True).start()
        ready.wait(10)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in _recorded_chunks():
            if "usage" in chunk and not (body.get("stream_options") or {}).get("include_usage"):
                continue
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FakeUpstream, RecordedUpstream, Path]]:
    upstream, recorded = FakeUpstream(chunk_delay=0.001).start(), RecordedUpstream()
    data = tmp_path_factory.mktemp("messages")
    config = f"""
models:
  - name: m
    deployments:
      - {{provider: openai, api_base: "{upstream.url('ok')}", price: {{input_per_1m: 1.0, output_per_1m: 2.0}}}}
  - name: tools
    deployments:
      - {{provider: openai, api_base: "{upstream.url('tools')}"}}
  - name: split
    deployments:
      - {{provider: openai, api_base: "http://127.0.0.1:{recorded.port}/v1"}}
access:
  keys_refresh_s: 0.2
  ledger_flush_s: 0.1
"""
    try:
        with gateway(config, data) as (base, _):
            yield base, upstream, recorded, data
    finally:
        upstream.stop()
        recorded.stop()


def _client(base: str, key: str = MASTER) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=30)


def test_create_answers_a_message_and_the_upstream_gets_chat(served: Any) -> None:
    base, upstream, _, _ = served
    message = _client(base).messages.create(
        model="m", max_tokens=64, system="Be brief.", messages=HI, stop_sequences=["END"],
        metadata={"user_id": "user-7"}, extra_body={"temperature": 0.5, "top_k": 5})
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == "m"
    assert [(b.type, b.text) for b in message.content if b.type == "text"] == [("text", TEXT)]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, len(WORDS))
    sent = upstream.seen[-1].body
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert (sent["max_tokens"], sent["temperature"], sent["top_k"], sent["stop"], sent["user"]) == (
        64, 0.5, 5, ["END"], "user-7")


def test_a_tool_round_trip(served: Any) -> None:
    base, upstream, _, _ = served
    upstream.replies["tools"] = [
        {"tool_calls": [{"id": "call_w", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"content": "It is sunny in Paris."},
    ]
    client = _client(base)
    first = client.messages.create(model="tools", max_tokens=100, messages=HI, tools=[WEATHER],
                                   tool_choice={"type": "any"})
    assert first.stop_reason == "tool_use"
    use = first.content[-1]
    assert use.type == "tool_use" and (use.id, use.name, use.input) == ("call_w", "get_weather", {"city": "Paris"})
    asked = upstream.seen[-1].body
    assert asked["tool_choice"] == "required"
    assert asked["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": WEATHER["description"], "parameters": WEATHER["input_schema"]}}]

    second = client.messages.create(model="tools", max_tokens=100, tools=[WEATHER], messages=[
        *HI, {"role": "assistant", "content": first.content},  # type: ignore[list-item]
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_w", "content": "22C, clear"}]}])
    assert second.content[0].type == "text" and second.content[0].text == "It is sunny in Paris."
    assert second.stop_reason == "end_turn"
    messages = upstream.seen[-1].body["messages"]
    assert messages[1]["role"] == "assistant" and messages[1]["content"] is None
    assert messages[1]["tool_calls"] == [{"id": "call_w", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city":"Paris"}'}}]
    assert messages[2] == {"role": "tool", "tool_call_id": "call_w", "content": "22C, clear"}


def test_stream_text_deltas_join_with_usage_and_stop_reason(served: Any) -> None:
    base, upstream, _, _ = served
    with _client(base).messages.stream(model="m", max_tokens=64, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == TEXT
    assert final.content[0].type == "text" and final.content[0].text == TEXT
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (7, len(WORDS))
    assert upstream.seen[-1].body["stream_options"] == {"include_usage": True}


def test_stream_keeps_tool_arguments_split_across_many_chunks(served: Any) -> None:
    base, _, recorded, _ = served
    with _client(base).messages.stream(model="split", max_tokens=200, messages=HI, tools=[WEATHER]) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert [block.type for block in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[0].text == "Let me check."  # type: ignore[union-attr]
    uses = [(b.id, b.name, b.input) for b in final.content if b.type == "tool_use"]
    assert uses == [("call_0", "get_weather", json.loads(ARGS[0])), ("call_1", "get_weather", json.loads(ARGS[1]))]
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (31, 40)
    starts = [e.index for e in events if e.type == "content_block_start"]
    stops = [e.index for e in events if e.type == "content_block_stop"]
    assert starts == stops == [0, 1, 2]
    pieces = [e.delta.partial_json for e in events  # type: ignore[union-attr]
              if e.type == "content_block_delta" and e.delta.type == "input_json_delta" and e.index == 1]
    assert len(pieces) > 10 and "".join(pieces) == ARGS[0]
    assert recorded.seen[-1]["stream_options"] == {"include_usage": True}


def test_streamed_events_are_anthropics_in_order(served: Any) -> None:
    base, _, _, _ = served
    request = {"model": "m", "max_tokens": 64, "messages": HI, "stream": True}
    with httpx.stream("POST", base + "/v1/messages", json=request, timeout=30,
                      headers={"x-api-key": MASTER, "anthropic-version": "2023-06-01"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        names = [line[7:] for line in response.iter_lines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[3:-3] == ["content_block_delta"] * len(WORDS)
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_count_tokens(served: Any) -> None:
    base, upstream, _, _ = served
    before = len(upstream.seen)
    client = _client(base)
    counted = client.messages.count_tokens(model="m", messages=[{"role": "user", "content": "x" * 400}])
    # The gateway's estimate (usage.cost): 400 characters / 4, plus 4 per message and 3.
    assert counted.input_tokens == 100 + 4 + 3
    with_tools = client.messages.count_tokens(model="m", messages=[{"role": "user", "content": "x" * 400}],
                                              tools=[WEATHER])  # type: ignore[list-item]
    assert with_tools.input_tokens > counted.input_tokens
    assert len(upstream.seen) == before  # no backend call
    with pytest.raises(anthropic.AuthenticationError):
        _client(base, "sk-wrong").messages.count_tokens(model="m", messages=HI)  # type: ignore[arg-type]
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.count_tokens(model="nope", messages=HI)  # type: ignore[arg-type]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_errors_come_in_anthropics_envelope(served: Any) -> None:
    base, _, _, _ = served
    client = _client(base)
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model="m", max_tokens=10, messages=HI, extra_body={"temperature": 3})  # type: ignore[arg-type]
    assert bad.value.body == {"type": "error", "error": {"type": "invalid_request_error", "message": (
        "Invalid 'temperature': decimal above maximum value. Expected a value <= 1, but got 3 instead.")}}
    with pytest.raises(anthropic.BadRequestError) as block:
        client.messages.create(model="m", max_tokens=10, messages=[
            {"role": "user", "content": [{"type": "tool_result"}]}])  # type: ignore[list-item, typeddict-item]
    assert "messages[0].content[0].tool_use_id" in block.value.message
    with pytest.raises(anthropic.AuthenticationError) as auth:
        _client(base, "sk-wrong").messages.create(model="m", max_tokens=10, messages=HI)  # type: ignore[arg-type]
    assert auth.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="nope", max_tokens=10, messages=HI)  # type: ignore[arg-type]
    limited = _client(base, create_key(base, rpm=1)["key"])
    limited.messages.create(model="m", max_tokens=10, messages=HI)  # type: ignore[arg-type]
    with pytest.raises(anthropic.RateLimitError) as slow:
        limited.messages.create(model="m", max_tokens=10, messages=HI)  # type: ignore[arg-type]
    assert slow.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert slow.value.response.headers.get("retry-after")


def test_a_virtual_key_is_budgeted_and_ledgered(served: Any) -> None:
    base, _, _, data = served
    key = create_key(base, budget="1/day")
    message = _client(base, key["key"]).messages.create(model="m", max_tokens=6, messages=HI)
    assert message.usage.output_tokens == len(WORDS)
    row = _ledger_row(base, data, key["id"])
    # 7 prompt tokens at 1.00 and 6 completion tokens at 2.00 per 1M tokens: 19,000 nano-dollars.
    assert row == (7, len(WORDS), 19_000, 200, 0)  # prompt, completion, nano-dollars, status, partial
    state = httpx.get(f"{base}/admin/keys/{key['id']}", headers={"Authorization": f"Bearer {MASTER}"}).json()
    assert round(state["budgets"][0]["committed_usd"] * 1e9) == 19_000



def test_a_stream_the_client_hangs_up_on_is_billed_for_what_it_was_sent(tmp_path: Path) -> None:
    upstream = TokenUpstream()  # 200 one-token chunks, 2 ms apart
    try:
        with gateway(_config(upstream, "done"), tmp_path) as (base, _):
            key = create_key(base, budget="100/day")
            deltas = 0
            request = {"model": "m", "max_tokens": 500, "messages": PROMPT, "stream": True}
            with httpx.stream("POST", base + "/v1/messages", json=request, timeout=30,
                              headers={"x-api-key": key["key"], "anthropic-version": "2023-06-01"}) as response:
                for line in response.iter_lines():
                    deltas += line == "event: content_block_delta"
                    if deltas == 30:
                        break
            prompt, completion, cost, status, partial = _ledger_row(base, tmp_path, key["id"])
            committed = _committed(base, key["id"])
    finally:
        upstream.stop()
    assert (status, partial, prompt) == (499, 1, PROMPT_ESTIMATE)
    assert 30 <= completion <= 40  # the 30 read, and a few that were on their way when it hung up
    assert committed == cost == (prompt + completion) * NANOS_PER_TOKEN
