"""``/v1/responses`` over real sockets, with the official ``openai`` SDK, against scripted chat upstreams.

The gateway translates to chat completions: the fake upstream (tests/fakes.py) sees chat bodies and
answers with scripted assistant messages and tool calls, whole or streamed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.access_support import MASTER, SERVED_COST, create_key, gateway
from tests.fakes import FakeUpstream

ARGUMENTS = json.dumps({"city": "Paris", "units": "celsius", "note": "quotes \" and braces {} survive"})
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                "strict": False}
TOOL_CALL = {"tool_calls": [{"id": "call_w1", "type": "function",
                             "function": {"name": "get_weather", "arguments": ARGUMENTS}}]}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(chunk_delay=0.001).start()
    yield fake
    fake.stop()


def _config(upstream: FakeUpstream, scenarios: list[str]) -> str:
    models = "".join(f"""
  - name: {name}
    deployments:
      - provider: openai
        api_base: {upstream.url(name)}
        price: {{input_per_1m: 1.0, output_per_1m: 2.0}}""" for name in scenarios)
    return f"""
models:{models}
access:
  keys_refresh_s: 0.2
  ledger_flush_s: 0.2
  redis_prefix: "tw-test-resp:"
"""


def _client(base: str, key: str = MASTER) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)


def _seen(upstream: FakeUpstream, scenario: str) -> list[dict[str, Any]]:
    return [s.body for s in upstream.seen if s.path.startswith(f"/{scenario}/")]


def test_create_answers_a_response_object_from_a_chat_answer(upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.replies["plain"] = [{"content": '{"greeting": "Bonjour, Paris."}'}]  # the schema is checked
    with gateway(_config(upstream, ["plain"]), tmp_path) as (base, _):
        response = _client(base).responses.create(
            model="plain", input="Say hello", instructions="Be brief.", max_output_tokens=50, temperature=0.2,
            metadata={"team": "web"}, text={"format": {"type": "json_schema", "name": "greeting", "strict": True,
                                                       "schema": {"type": "object"}}})
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    assert json.loads(response.output_text) == {"greeting": "Bonjour, Paris."}
    assert response.output[0].type == "message" and response.output[0].role == "assistant"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (7, 6, 13)
    assert response.instructions == "Be brief." and response.metadata == {"team": "web"}
    assert response.max_output_tokens == 50 and response.temperature == 0.2
    sent = _seen(upstream, "plain")[-1]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    assert sent["max_tokens"] == 50 and sent["temperature"] == 0.2
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "greeting", "schema": {"type": "object"}, "strict": True}}
    assert "stream" not in sent and "store" not in sent and "metadata" not in sent


def test_a_stream_sends_the_responses_events_and_usage(upstream: FakeUpstream, tmp_path: Path) -> None:
    text = "A streamed answer, in pieces of eight characters."
    upstream.replies["streamed"] = [{"content": text}]
    with gateway(_config(upstream, ["streamed"]), tmp_path) as (base, _):
        events = list(_client(base).responses.create(model="streamed", input="go", stream=True))
    kinds = [event.type for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) > 3 and "".join(deltas) == text
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == text and completed.response.status == "completed"
    assert completed.response.usage is not None and completed.response.usage.output_tokens == 6
    sent = _seen(upstream, "streamed")[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("stream", [False, True])
def test_a_function_call_round_trip_with_previous_response_id(
    upstream: FakeUpstream, tmp_path: Path, stream: bool
) -> None:
    scenario = f"tools{int(stream)}"
    upstream.replies[scenario] = [TOOL_CALL, {"content": "It is sunny in Paris."}]
    with gateway(_config(upstream, [scenario]), tmp_path) as (base, _):
        client = _client(base)
        if stream:
            events = list(client.responses.create(model=scenario, input="Weather in Paris?", tools=[WEATHER_TOOL],
                                                  stream=True))
            argument_deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
            done = next(e for e in events if e.type == "response.function_call_arguments.done")
            assert "".join(argument_deltas) == ARGUMENTS and done.arguments == ARGUMENTS
            first = events[-1].response
        else:
            first = client.responses.create(model=scenario, input="Weather in Paris?", tools=[WEATHER_TOOL],
                                            tool_choice="auto", parallel_tool_calls=False)
        call = first.output[0]
        assert call.type == "function_call" and call.name == "get_weather" and call.call_id == "call_w1"
        assert call.arguments == ARGUMENTS and json.loads(call.arguments)["city"] == "Paris"
        second = client.responses.create(
            model=scenario, previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "sunny"}'}])
    assert second.output_text == "It is sunny in Paris." and second.previous_response_id == first.id
    asked, answered = _seen(upstream, scenario)[-2:]
    assert asked["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER_TOOL["parameters"],
        "strict": False}}]
    assert answered["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}]},
        {"role": "tool", "tool_call_id": "call_w1", "content": '{"sky": "sunny"}'},
    ]


def test_get_and_delete_a_stored_response_and_store_false(upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.replies["kept"] = [{"content": "Kept."}]
    with gateway(_config(upstream, ["kept"]), tmp_path) as (base, _):
        client = _client(base)
        made = client.responses.create(model="kept", input="keep this")
        fetched = client.responses.retrieve(made.id)
        client.responses.delete(made.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(made.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.delete(made.id)
        unstored = client.responses.create(model="kept", input="forget this", store=False)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(unstored.id)
        deleted = httpx.delete(f"{base}/v1/responses/{made.id}", headers={"Authorization": f"Bearer {MASTER}"})
    assert fetched.id == made.id and fetched.output_text == "Kept." and fetched.usage == made.usage
    assert unstored.store is False
    assert deleted.status_code == 404 and deleted.json()["error"]["param"] == "response_id"


def test_a_key_sees_only_its_own_responses(upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.replies["own"] = [{"content": "Mine."}]
    with gateway(_config(upstream, ["own"]), tmp_path) as (base, _):
        alice, bob = create_key(base, name="alice")["key"], create_key(base, name="bob")["key"]
        made = _client(base, alice).responses.create(model="own", input="secret plan")
        assert _client(base, alice).responses.retrieve(made.id).id == made.id
        with pytest.raises(openai.NotFoundError):
            _client(base, bob).responses.retrieve(made.id)
        with pytest.raises(openai.NotFoundError) as continued:
            _client(base, bob).responses.create(model="own", input="and then?", previous_response_id=made.id)
        with pytest.raises(openai.NotFoundError):
            _client(base, bob).responses.delete(made.id)
        assert _client(base, alice).responses.retrieve(made.id).id == made.id  # bob's delete did nothing
    assert continued.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert len([s for s in _seen(upstream, "own") if "and then?" in json.dumps(s)]) == 0


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "bad", "input": [{"role": "user", "content": "hi"},
                                {"type": "function_call_output", "output": "x"}]}, "input[1].call_id"),
    ({"model": "bad", "input": "hi", "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools[0].name"),
    ({"model": "bad", "input": "hi", "temperature": "hot"}, "temperature"),
    ({"model": "bad"}, "input"),
    ({"model": "bad", "input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
    ({"model": "bad", "input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"model": "bad", "input": "hi", "max_output_tokens": 10**9}, "max_output_tokens"),
])
def test_bad_input_is_a_400_naming_the_field(
    upstream: FakeUpstream, tmp_path: Path, body: dict[str, Any], param: str
) -> None:
    with gateway(_config(upstream, ["bad"]), tmp_path) as (base, _):
        with pytest.raises(openai.BadRequestError) as raised:
            _client(base).responses.create(**body)
    assert raised.value.status_code == 400
    assert raised.value.body["param"] == param  # type: ignore[index]
    assert raised.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert not _seen(upstream, "bad")


def test_keys_budgets_and_the_ledger_work_as_for_chat(upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.replies["billed"] = [{"content": "Billed."}]
    with gateway(_config(upstream, ["billed"]), tmp_path) as (base, _):
        key = create_key(base, name="billed", budget={"amount": 1.5 * SERVED_COST / 1e9, "period": "total"})["key"]
        with pytest.raises(openai.AuthenticationError):
            _client(base, "sk-not-a-key").responses.create(model="billed", input="hi")
        _client(base, key).responses.create(model="billed", input="hi", max_output_tokens=6)
        with pytest.raises(openai.RateLimitError):  # one answer's cost is spent; another does not fit
            _client(base, key).responses.create(model="billed", input="hi", max_output_tokens=6)
        deadline, own = time.time() + 5, {}
        while time.time() < deadline:
            own = httpx.get(base + "/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()
            if own.get("by_model"):
                break
            time.sleep(0.1)
    row = own["by_model"][0]
    # Both calls are rows, as for chat: the refused one at no tokens and no cost.
    assert (row["model"], row["requests"], row["prompt_tokens"], row["completion_tokens"]) == ("billed", 2, 7, 6)
    assert row["cost_nanos"] == SERVED_COST


def test_with_redis_a_conversation_continues_on_another_replica(upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.replies["shared"] = [{"content": "First answer."}, {"content": "Second answer."}]
    yaml = _config(upstream, ["shared"]) + f'responses: {{redis_prefix: "tw-test-resp-{time.time_ns()}:"}}\n'
    redis_url = "redis://127.0.0.1:6379/0"
    with gateway(yaml, tmp_path / "a", redis_url=redis_url) as (first, _), \
            gateway(yaml, tmp_path / "b", redis_url=redis_url) as (second, _):
        made = _client(first).responses.create(model="shared", input="Remember: blue.")
        followed = _client(second).responses.create(model="shared", input="What colour?",
                                                    previous_response_id=made.id)
        fetched = _client(second).responses.retrieve(made.id)
    assert followed.output_text == "Second answer." and fetched.output_text == "First answer."
    assert _seen(upstream, "shared")[-1]["messages"] == [
        {"role": "user", "content": "Remember: blue."}, {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "What colour?"}]
