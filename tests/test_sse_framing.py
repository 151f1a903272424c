"""SSE framing: one decoder for every framing a backend may use, one framing inside the gateway,
and the completion tokens the stream writer hands to the client."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest

from tests.fakes import WORDS, FakeUpstream
from tests.servers import running_app, running_gateway
from tests.test_gateway_openai import MESSAGES, client, config
from tokenway.context import RequestContext
from tokenway.protocol import SSE_DONE, SSEDecoder, ends_stream, iter_sse_data, sse_data, sse_events
from tokenway.streaming import completion_tokens

TEXT = "".join(WORDS)


def feed_all(pieces: list[bytes]) -> bytes:
    decoder = SSEDecoder()
    return b"".join(decoder.feed(piece) for piece in pieces)


def one_byte_at_a_time(stream: bytes) -> list[bytes]:
    return [stream[i:i + 1] for i in range(len(stream))]


# ---- the decoder ------------------------------------------------------------------------------

CANONICAL = b'data: {"a":1}\n\ndata: {"b":2}\n\n' + SSE_DONE
FRAMINGS = {
    "lf": CANONICAL,
    "crlf": b'data: {"a":1}\r\n\r\ndata: {"b":2}\r\n\r\ndata: [DONE]\r\n\r\n',
    "cr": b'data: {"a":1}\r\rdata: {"b":2}\r\rdata: [DONE]\r\r',
    "no space": b'data:{"a":1}\n\ndata:{"b":2}\n\ndata:[DONE]\n\n',
    "mixed": b'data: {"a":1}\r\n\ndata:{"b":2}\r\rdata: [DONE]\n\r\n',
}


@pytest.mark.parametrize("framing", FRAMINGS)
def test_every_line_end_comes_out_canonical(framing: str) -> None:
    stream = FRAMINGS[framing]
    assert feed_all([stream]) == CANONICAL
    assert feed_all(one_byte_at_a_time(stream)) == CANONICAL
    assert iter_sse_data(stream) == [b'{"a":1}', b'{"b":2}', b"[DONE]"]


def test_canonical_events_pass_through_as_they_came() -> None:
    assert SSEDecoder().feed(CANONICAL) is CANONICAL


def test_an_event_is_handed_on_only_once_its_blank_line_is_in() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a"') == b""
    assert decoder.feed(b":1}\r") == b""
    assert decoder.feed(b"\n\r") == b'data: {"a":1}\n\n'  # "\r" alone ends a line; "\r\n" is one line end
    assert decoder.feed(b"\ndata: [DONE]\r") == b""  # the "\n" finishing the split "\r\n" is no blank line
    assert decoder.feed(b"\r") == SSE_DONE


def test_a_crlf_split_between_reads_is_one_line_end() -> None:
    # Were the "\n" after a read that ended in "\r" a line end of its own, it would make a blank
    # line there, and "1" and "2" would be two events.
    assert feed_all([b"data: 1\r", b"\ndata: 2\r", b"\n\r", b"\n"]) == b"data: 1\ndata: 2\n\n"
    assert feed_all([b"data: 1\r\n\r", b"\ndata: 2\r\n\r\n"]) == b"data: 1\n\ndata: 2\n\n"


def test_comments_and_other_fields_are_dropped() -> None:
    stream = b": keep-alive\n\nevent: message\nid: 7\nretry: 100\ndata: {\"a\":1}\n\n:\n\n"
    assert feed_all([stream]) == b'data: {"a":1}\n\n'
    assert SSEDecoder().feed(b": only a comment\n\n") == b""


def test_data_lines_of_one_event_make_one_payload() -> None:
    stream = b'data: {"a":\ndata:  1}\n\n'  # one optional space is taken off, not two
    assert iter_sse_data(stream) == [b'{"a":\n 1}']
    block = feed_all([stream])
    assert block == b'data: {"a":\ndata:  1}\n\n'
    assert iter_sse_data(block) == [b'{"a":\n 1}']


def test_events_without_data_are_not_dispatched() -> None:
    assert feed_all([b"data:\n\ndata: \n\n"]) == b""
    assert iter_sse_data(b"data\ndata\n\n") == [b"\n"]  # two empty data lines: a payload of one line end


def test_the_last_event_may_lack_its_blank_line_when_parsing_a_whole_block() -> None:
    # The benchmark client hands its events over with their blank lines cut off.
    assert iter_sse_data(b'data: {"a":1}') == [b'{"a":1}']
    assert iter_sse_data(b"data:[DONE]\r\n") == [b"[DONE]"]


def test_canonical_writers() -> None:
    assert sse_data(b"x") == b"data: x\n\n"
    assert sse_data(b"x\ny") == b"data: x\ndata: y\n\n"
    assert sse_events([b"x", b"y"]) == b"data: x\n\ndata: y\n\n"
    assert sse_events([b"x", b"y\nz"]) == b"data: x\n\ndata: y\ndata: z\n\n"
    assert sse_events([]) == b""
    assert ends_stream(sse_events([b"x"]) + SSE_DONE) and not ends_stream(sse_events([b"x"]))


# ---- counting completion tokens -------------------------------------------------------------


def chunk(**choice: Any) -> bytes:
    return sse_data(json.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [choice]}).encode())


@pytest.mark.parametrize(("block", "tokens"), [
    (chunk(index=0, delta={"content": "Hi"}, finish_reason=None), 1),
    (chunk(index=0, delta={"role": "assistant", "content": ""}, finish_reason=None), 0),
    (chunk(index=0, delta={}, finish_reason="stop"), 0),
    (chunk(index=0, delta={"reasoning_content": "hmm"}), 1),
    (chunk(index=0, delta={"tool_calls": [{"index": 0, "id": "t", "function": {"name": "f", "arguments": ""}}]}), 0),
    (chunk(index=0, delta={"tool_calls": [{"index": 0, "function": {"arguments": "{\"x\""}}]}), 1),
    (chunk(index=0, delta={"function_call": {"arguments": "1"}}), 1),
    (chunk(index=0, text=" word", finish_reason=None), 1),
    (chunk(index=0, text="", finish_reason="length"), 0),
    (sse_data(b'{"choices":[],"usage":{"completion_tokens":9}}'), 0),
    (sse_data(b'{"error":{"message":"boom"}}'), 0),
    (sse_data(b'{"delta":"Hi"}') + sse_data(b'{"content":"Hi","cached":false}'), 1),  # /chat's events
    (sse_data(b'{"choices":[{"delta":{"content":"a"}},{"delta":{"content":"b"}}]}'), 2),
    (chunk(index=0, delta={"content": "a"}) + chunk(index=0, delta={"content": "b"}) + SSE_DONE, 2),
    (sse_data(b"{not json") + sse_data(b'{"choices":"odd"}') + b": keep-alive\n\n", 0),
])
def test_completion_tokens(block: bytes, tokens: int) -> None:
    assert completion_tokens(block) == tokens


# ---- real sockets: a backend in every framing, the openai SDK through the gateway --------------


class ScriptedUpstream:
    """An OpenAI-compatible backend that streams exactly the bytes of a script, one socket write per
    piece (a moment apart, so that each is its own read at the gateway), whatever the request."""

    def __init__(self, scripts: dict[str, list[bytes]]) -> None:
        self.scripts = scripts
        self.bodies: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self.port = 0

    def url(self, script: str) -> str:
        return f"http://127.0.0.1:{self.port}/{script}/v1"

    def __enter__(self) -> ScriptedUpstream:
        threading.Thread(target=self._run, daemon=True).start()
        self._started.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                path = lines[0].split(" ")[1]
                length = next((int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length")), 0)
                body = await reader.readexactly(length)
                if path.endswith("/models"):
                    answer = b'{"object":"list","data":[{"id":"upstream-model"}]}'
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(answer), answer))
                    continue
                self.bodies.append(json.loads(body))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
                for piece in self.scripts[path.split("/")[1]]:
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
                    await asyncio.sleep(0.002)
                writer.write(b"0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def payloads() -> list[bytes]:
    """A stream as vLLM writes it when asked for usage: role, one token per chunk, finish, usage, [DONE]."""
    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choices = [] if "usage" in extra else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        return json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                           "model": "upstream-model", "choices": choices, **extra}).encode()

    usage = {"prompt_tokens": 7, "completion_tokens": len(WORDS), "total_tokens": 7 + len(WORDS)}
    return [chunk({"role": "assistant", "content": ""}), *(chunk({"content": word}) for word in WORDS),
            chunk({}, "stop"), chunk({}, usage=usage), b"[DONE]"]


def framed(eol: bytes, data: bytes = b"data: ") -> list[bytes]:
    """The stream's events with these line ends, one socket write each (as a model server sends them)."""
    return [data + payload + eol + eol for payload in payloads()]


def cut(stream: bytes, every: int) -> list[bytes]:
    """``stream`` in pieces cut mid-line every ``every`` bytes, and between each "\\r" and what follows it."""
    cuts = sorted({*range(every, len(stream), every), *(i + 1 for i, b in enumerate(stream) if b == 13)})
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


def with_extras() -> bytes:
    """Comments, other fields and an event whose JSON spans two data lines, as some servers write them."""
    first, *rest = payloads()
    at = first.index(b",") + 1  # where a pretty-printing server breaks the line
    return (b": ping\r\n\r\nevent: message\r\nid: 1\r\ndata: " + first[:at] + b"\r\ndata: " + first[at:]
            + b"\r\n\r\n" + b"".join(b"data: " + p + b"\r\n\r\n" for p in rest))


SCRIPTS = {
    "lf": framed(b"\n"),
    "crlf": framed(b"\r\n"),
    "cr": framed(b"\r"),
    "nospace": framed(b"\n", data=b"data:"),
    "crlf-in-one-write": [b"".join(framed(b"\r\n"))],
    "split-lf": cut(b"".join(framed(b"\n")), 29),
    "split-crlf": cut(b"".join(framed(b"\r\n")), 29),
    "split-cr": cut(b"".join(framed(b"\r")), 29),
    "extras": cut(with_extras(), 53),
}


@contextmanager
def finished_requests(yaml: str) -> Iterator[tuple[str, list[RequestContext]]]:
    """A running gateway, and the context of each request it has finished (as its log line sees it)."""
    with running_app(yaml) as (base, app):
        finished: list[RequestContext] = []
        log_request = app.log.request

        def record(ctx: RequestContext, end: float) -> None:
            finished.append(ctx)
            log_request(ctx, end)

        app.log.request = record  # type: ignore[method-assign]
        yield base, finished


def wait_for(finished: list[RequestContext], count: int = 1) -> list[RequestContext]:
    deadline = time.monotonic() + 5
    while len(finished) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(finished) >= count, "the gateway did not finish the request"
    return finished


def scripted_config(upstream: ScriptedUpstream, script: str) -> str:
    return f"""
models:
  - name: m
    deployments:
      - provider: openai
        api_base: {upstream.url(script)}
        model: upstream-model
"""


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_sdk_reads_every_framing_through_the_gateway(script: str) -> None:
    with ScriptedUpstream(SCRIPTS) as upstream, finished_requests(scripted_config(upstream, script)) as (base, done):
        sdk = client(base)
        chunks = list(sdk.chat.completions.create(model="m", messages=MESSAGES, stream=True))
        with_usage = list(sdk.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
        raw = httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES, "stream": True})
        contexts = wait_for(done, 3)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert all(c.usage is None for c in chunks)  # the gateway asked for usage, and kept it to itself
    assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens == len(WORDS)
    assert upstream.bodies[0]["stream_options"] == {"include_usage": True}
    # What the client gets is canonical, whatever the backend wrote.
    assert b"\r" not in raw.content and raw.content.endswith(SSE_DONE)
    lines = raw.content.split(b"\n\n")[:-1]
    assert all(line.startswith(b"data: ") for event in lines for line in event.split(b"\n"))
    assert [json.loads(p) for p in iter_sse_data(raw.content)[:-1]] == [json.loads(p) for p in payloads()[:-2]]
    assert all(ctx.status == 200 and ctx.delivered_tokens == len(WORDS) for ctx in contexts)


def test_a_stream_that_never_sends_done_is_an_error_event() -> None:
    scripts = {"nodone": framed(b"\r\n")[:-1]}
    with ScriptedUpstream(scripts) as upstream, running_gateway(scripted_config(upstream, "nodone")) as base:
        with pytest.raises(openai.APIError, match="without \\[DONE\\]"):
            list(client(base).chat.completions.create(model="m", messages=MESSAGES, stream=True))


# ---- delivered tokens: every way a stream ends ------------------------------------------------


def test_delivered_tokens_of_whole_streams(upstream: FakeUpstream) -> None:
    with finished_requests(config(upstream)) as (base, done):
        list(client(base).chat.completions.create(model="m", messages=MESSAGES, stream=True))
        list(client(base).completions.create(model="m", prompt="hi", stream=True))
        with httpx.stream("POST", base + "/chat", json={"messages": MESSAGES, "stream": True}) as r:
            r.read()
        contexts = wait_for(done, 3)
    assert [ctx.delivered_tokens for ctx in contexts] == [len(WORDS)] * 3
    assert contexts[0].usage is not None and contexts[0].usage.completion_tokens == len(WORDS)


def test_delivered_tokens_when_the_client_hangs_up(upstream: FakeUpstream) -> None:
    upstream.chunk_delay = 0.3  # the next chunk comes well after the hang-up is noticed
    with finished_requests(config(upstream)) as (base, done):
        read = 0
        with httpx.stream("POST", base + "/v1/chat/completions",
                          json={"model": "m", "messages": MESSAGES, "stream": True}) as r:
            for line in r.iter_lines():
                read += line.startswith("data: {")
                if read == 2:
                    break  # and close the connection
        [ctx] = wait_for(done)
    assert ctx.status == 499
    assert ctx.delivered_tokens == 2


def test_delivered_tokens_when_the_backend_dies_mid_stream(upstream: FakeUpstream) -> None:
    with finished_requests(config(upstream, "reset")) as (base, done):
        with pytest.raises(openai.APIError):
            list(client(base).chat.completions.create(model="m", messages=MESSAGES, stream=True))
        [ctx] = wait_for(done)
    assert ctx.failed_mid_stream
    assert ctx.delivered_tokens == 3  # the backend closed the connection before its fourth chunk


def test_delivered_tokens_when_the_backend_stalls_past_the_idle_limit(upstream: FakeUpstream) -> None:
    upstream.first_delay = 0
    with finished_requests(config(upstream, "stall", deployment="timeouts: {idle: 0.3}")) as (base, done):
        with pytest.raises(openai.APIError):
            list(client(base).chat.completions.create(model="m", messages=MESSAGES, stream=True))
        [ctx] = wait_for(done)
    assert ctx.error_type == "UpstreamTimeout"
    assert ctx.delivered_tokens == 2  # the backend stalls before its third chunk


# ---- /chat says when the cache answered -------------------------------------------------------


def test_simple_chat_says_cached_when_the_cache_answered(upstream: FakeUpstream) -> None:
    body = {"messages": [{"role": "user", "content": f"What is {uuid.uuid4().hex}?"}], "temperature": 0}
    headers = {"authorization": "Bearer unused"}
    with running_gateway(config(upstream)) as base:
        first = httpx.post(base + "/chat", json=body, headers=headers)
        second = httpx.post(base + "/chat", json=body, headers=headers)
        streamed = httpx.post(base + "/chat", json={**body, "stream": True}, headers=headers)
    assert first.headers["x-cache"] == "miss" and first.json()["cached"] is False
    assert second.headers["x-cache"] == "hit" and second.json()["cached"] is True
    assert second.json()["content"] == first.json()["content"] == TEXT
    final = json.loads(iter_sse_data(streamed.content)[-2])
    assert final["cached"] is True and final["content"] == TEXT
    assert len(upstream.seen) == 1


def test_a_coalesced_chat_stream_cut_short_owes_nothing(upstream: FakeUpstream) -> None:
    # Two identical /chat streams at once share one backend call; the second one's answer is free,
    # also when its client leaves early (a stream cut short is billed from its usage when it has one).
    upstream.chunk_delay = 0.2
    body = {"messages": [{"role": "user", "content": f"What is {uuid.uuid4().hex}?"}], "temperature": 0,
            "stream": True}
    headers = {"authorization": "Bearer unused"}
    with finished_requests(config(upstream)) as (base, done):
        with httpx.stream("POST", base + "/chat", json=body, headers=headers) as leader:
            lines = leader.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            with httpx.stream("POST", base + "/chat", json=body, headers=headers) as follower:
                next(line for line in follower.iter_lines() if line.startswith("data: "))
            [cut_short] = wait_for(done)
            list(lines)
        wait_for(done, 2)
    assert cut_short.cache is not None and cut_short.cache.status == "hit"
    assert cut_short.status == 499 and cut_short.delivered_tokens >= 1
    assert cut_short.usage is not None and cut_short.usage.total_tokens == 0
    assert len(upstream.seen) == 1
