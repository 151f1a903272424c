"""The cache's parts in-process: keys, stores, entries, and single-flight under cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tokenway.cache.entry import Entry, Uncacheable, as_sse, assemble
from tokenway.cache.exact import MemoryStore
from tokenway.cache.keys import exact_key, is_deterministic, semantic_scope, tenant_scope
from tokenway.cache.options import CacheConfig, ModelCacheConfig
from tokenway.context import RequestContext
from tokenway.policies.cache import ResponseCache
from tokenway.protocol import Usage, ends_stream, iter_sse_data, sse_event
from tokenway.providers.base import Call, Completion, Stream

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def ctx(key: str = "k") -> RequestContext:
    return RequestContext(request_id="r", endpoint="chat", api_key=key)


def test_keys_cover_what_changes_the_output_and_nothing_else() -> None:
    base = exact_key("chat", BODY, "t")
    assert exact_key("chat", {**BODY, "temperature": 0.0}, "t") == base
    delivery = {"stream": True, "stream_options": {"include_usage": True}, "user": "u"}
    assert exact_key("chat", {**BODY, **delivery}, "t") == base
    for change in ({"max_tokens": 3}, {"top_k": 5}, {"tools": [{"type": "function"}]}, {"seed": 1}, {"model": "n"}):
        assert exact_key("chat", {**BODY, **change}, "t") != base
    assert exact_key("chat", BODY, "other tenant") != base
    assert exact_key("completions", BODY, "t") != base
    assert is_deterministic(BODY) and is_deterministic({"seed": 3}) and not is_deterministic({"temperature": 0.2})
    assert not is_deterministic({})  # OpenAI's default temperature is 1
    assert tenant_scope(ctx("sk-a")) != tenant_scope(ctx("sk-b")) and "sk-a" not in tenant_scope(ctx("sk-a"))
    system = {**BODY, "messages": [{"role": "system", "content": "x"}, *BODY["messages"]]}
    assert semantic_scope("chat", system, "t") != semantic_scope("chat", BODY, "t")
    reworded = {**BODY, "messages": [{"role": "user", "content": "hello"}]}
    assert semantic_scope("chat", reworded, "t") == semantic_scope("chat", BODY, "t")


async def test_memory_store_is_bounded_by_bytes_and_evicts_least_recent() -> None:
    store = MemoryStore(max_bytes=300)
    for name in "abc":
        await store.set(name, b"x" * 99, 60)
    assert len(store) == 3 and store.bytes == 300
    assert await store.get("a") is not None  # a is now the most recent
    await store.set("d", b"x" * 99, 60)
    assert await store.get("b") is None and await store.get("a") is not None and store.bytes <= 300
    await store.set("e", b"x", 0.01)
    await asyncio.sleep(0.02)
    assert await store.get("e") is None


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    return sse_event({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "up", "choices": choices})


def test_tool_call_streams_assemble_and_replay() -> None:
    call = {"index": 0, "id": "t1", "type": "function", "function": {"name": "get", "arguments": '{"a"'}}
    blocks = [chunk({"role": "assistant", "content": None, "tool_calls": [call]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
              chunk({}, "tool_calls") + b"data: [DONE]\n\n"]
    body = orjson.loads(assemble("chat", blocks, Usage(3, 4)))
    message = body["choices"][0]["message"]
    assert message["tool_calls"][0]["function"] == {"name": "get", "arguments": '{"a": 1}'}
    assert body["choices"][0]["finish_reason"] == "tool_calls" and body["usage"]["total_tokens"] == 7
    replayed = as_sse(Entry("chat", orjson.dumps(body), Usage(3, 4)), include_usage=True)
    again = orjson.loads(assemble("chat", [replayed], Usage(3, 4)))
    assert again == body
    with pytest.raises(Uncacheable):
        assemble("chat", blocks[:2], None)  # no finish, no [DONE]: truncated
    with pytest.raises(Uncacheable):
        assemble("chat", [blocks[0], b'data: {"error": {"message": "x"}}\n\n', blocks[2]], None)


def test_text_completion_replay() -> None:
    body = {"id": "x", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "text": "abc", "logprobs": None, "finish_reason": "length"}]}
    events = [orjson.loads(d) for d in iter_sse_data(as_sse(Entry("completions", orjson.dumps(body), None), False))
              if d != b"[DONE]"]
    assert "".join(e["choices"][0]["text"] for e in events) == "abc"
    assert events[-1]["choices"][0]["finish_reason"] == "length"


class Backend:
    """A ``next`` handler that counts calls and can be slow, stream, or fail."""

    def __init__(self, delay: float = 0.05, stream: bool = False) -> None:
        self.calls = 0
        self.cancelled = 0
        self.delay = delay
        self.stream = stream

    async def __call__(self, ctx: RequestContext, call: Call) -> Completion | Stream:
        self.calls += 1
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if not self.stream:
            return Completion(body=b'{"choices": [{"index": 0, "message": {"content": "ok"}}]}', usage=Usage(1, 1))

        async def blocks(s: Stream) -> AsyncIterator[bytes]:
            for word in ("a", "b"):
                await asyncio.sleep(self.delay)
                yield chunk({"content": word})
            s.usage = Usage(1, 2)
            yield chunk({}, "stop") + b"data: [DONE]\n\n"

        return Stream(blocks)


def policy() -> ResponseCache:
    return ResponseCache(CacheConfig(), {"m": ModelCacheConfig()}, MemoryStore(1 << 20))


async def read(answer: Completion | Stream) -> bytes:
    if isinstance(answer, Completion):
        return answer.body
    try:
        return b"".join([block async for block in answer])
    finally:
        await answer.aclose()


async def test_concurrent_identical_calls_make_one_backend_call() -> None:
    cache, backend = policy(), Backend()
    contexts = [ctx() for _ in range(10)]
    answers = await asyncio.gather(*(cache(c, Call("chat", BODY), backend) for c in contexts))
    assert backend.calls == 1
    assert len({a.body for a in answers}) == 1  # type: ignore[union-attr]
    paid = [a.usage for a in answers if a.usage and a.usage.total_tokens]  # type: ignore[union-attr]
    assert len(paid) == 1  # the leader pays; followers are coalesced hits at zero cost
    assert sorted(c.cache.status for c in contexts) == ["hit"] * 9 + ["miss"]
    assert (await cache(ctx(), Call("chat", BODY), backend)).body == answers[0].body  # type: ignore[union-attr]
    assert backend.calls == 1


async def test_a_departed_leader_does_not_cancel_the_followers() -> None:
    cache, backend = policy(), Backend(delay=0.05, stream=True)
    body = {**BODY, "stream": True}
    leader = asyncio.ensure_future(cache(ctx(), Call("chat", body), backend))
    await asyncio.sleep(0.01)
    follower = asyncio.ensure_future(cache(ctx(), Call("chat", body), backend))
    await asyncio.sleep(0.01)
    leader.cancel()
    text = await read(await follower)
    assert text.endswith(b"data: [DONE]\n\n") and b'"a"' in text and b'"b"' in text
    assert backend.calls == 1 and backend.cancelled == 0


async def test_a_follower_cut_short_owes_nothing_and_the_leader_its_delivered_tokens() -> None:
    # A stream that ends early is billed from its usage, or from the tokens delivered when it has
    # none yet: the follower's answer is free from its first block, the leader's is not.
    cache, backend = policy(), Backend(delay=0.05, stream=True)
    body = {**BODY, "stream": True}
    leader = await cache(ctx(), Call("chat", body), backend)
    follower = await cache(ctx(), Call("chat", body), backend)
    assert isinstance(leader, Stream) and isinstance(follower, Stream)
    assert b'"a"' in await leader.__anext__() and b'"a"' in await follower.__anext__()
    assert leader.usage is None
    assert follower.usage == Usage()
    await follower.aclose()
    await leader.aclose()


async def test_the_backend_call_stops_when_every_caller_left() -> None:
    cache, backend = policy(), Backend(delay=0.2)
    tasks = [asyncio.ensure_future(cache(ctx(), Call("chat", BODY), backend)) for _ in range(3)]
    await asyncio.sleep(0.02)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.01)
    assert backend.cancelled == 1
    answer = await cache(ctx(), Call("chat", BODY), backend)  # a fresh call starts a fresh flight
    assert isinstance(answer, Completion) and backend.calls == 2


async def test_a_reader_that_stops_at_done_still_pays_and_the_answer_is_stored() -> None:
    # The SSE writer stops reading at [DONE] and closes the stream; the backend's end of stream
    # may come later. The leader's usage must already be known, and the flight must finish and store.
    cache, backend = policy(), Backend(stream=True)
    end_of_stream = asyncio.Event()

    async def lagging(c: RequestContext, call: Call) -> Completion | Stream:
        inner = await backend(c, call)
        assert isinstance(inner, Stream)

        async def blocks(s: Stream) -> AsyncIterator[bytes]:
            async for block in inner:
                s.usage = inner.usage
                yield block
            await end_of_stream.wait()

        return Stream(blocks)

    body = {**BODY, "stream": True}
    answer = await cache(ctx(), Call("chat", body), lagging)
    assert isinstance(answer, Stream)
    async for block in answer:
        if ends_stream(block):
            break
    assert answer.usage == Usage(1, 2)
    await answer.aclose()
    end_of_stream.set()
    await asyncio.sleep(0.01)
    again = ctx()
    replay = await cache(again, Call("chat", body), lagging)
    assert b'"content":"ab"' in await read(replay)
    assert again.cache.status == "hit" and backend.calls == 1
