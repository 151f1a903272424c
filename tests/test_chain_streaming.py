"""Streams through the policy chain in process: passed through whole, retried only before the first byte."""

from __future__ import annotations

from tests.inprocess import TEXT, fail, gateway, http_error, reply, sse_data, streamed_text, unreachable
from tests.test_chain_retries import one_model


async def test_a_stream_passes_through_chunk_by_chunk_in_order() -> None:
    async with gateway(one_model("a")) as gw:
        pieces = [f"w{i} " for i in range(50)]
        gw.fake("a").script(reply(*pieces))
        r = await gw.chat(stream=True)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_data(r)
        assert events[-1] == "[DONE]"
        assert [e["choices"][0]["delta"]["content"] for e in events[:-1]] == pieces
        assert gw.fake("a").calls[0]["stream"] is True


async def test_a_stream_that_fails_before_its_first_chunk_is_retried_elsewhere() -> None:
    async with gateway(one_model("a", "b")) as gw:
        gw.fake("a").script(fail(http_error(502), after=0))  # the head went out, then nothing
        r = await gw.chat(stream=True)
        assert r.status_code == 200 and streamed_text(r) == TEXT and sse_data(r)[-1] == "[DONE]"
        assert len(gw.fake("a").calls) == 1 and len(gw.fake("b").calls) == 1


async def test_a_stream_refused_before_any_byte_is_retried_like_any_call() -> None:
    async with gateway(one_model("a")) as gw:
        gw.fake("a").script(fail(unreachable()), fail(http_error(503)))
        r = await gw.chat(stream=True)
        assert r.status_code == 200 and streamed_text(r) == TEXT
        assert len(gw.fake("a").calls) == 3


async def test_a_stream_is_never_retried_after_its_first_byte() -> None:
    async with gateway(one_model("a", "b")) as gw:
        gw.fake("a").script(fail(http_error(502), after=3))
        r = await gw.chat(stream=True)
        events = sse_data(r)
        assert r.status_code == 200
        assert streamed_text(r) == "Hello from the"  # the three chunks the client already had
        assert events[-1]["error"]["code"] == "upstream_error"  # then an error event, and no [DONE]
        assert gw.fake("b").calls == []  # no second call, no duplicate output
        assert gw.deployment("a").breaker.consecutive == 1  # the broken stream counts against a
