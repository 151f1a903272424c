"""Property tests of the Ollama translation (tokenway/providers/ollama.py): an NDJSON stream, cut into
pieces anywhere (inside a line, inside a UTF-8 character), becomes the same OpenAI chunks as when it
arrives whole, and its text and tool-call arguments come through intact.

The stream is read as the provider reads it: through aiohttp's ``StreamReader`` (what
``ClientResponse.content`` is), fed piece by piece while the translator waits on it. Hypothesis runs
derandomized; a failure prints the smallest stream and cut that break the property.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import orjson
from aiohttp.base_protocol import BaseProtocol
from hypothesis import given
from hypothesis import strategies as st

from tests.property_support import PROPERTY, cuts
from tokenway.protocol import is_done, iter_sse_data
from tokenway.providers.base import Call, Stream
from tokenway.providers.ollama import _ChatTranslator, _TextTranslator

TEXT = st.text(max_size=12)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
ARGUMENTS = st.dictionaries(st.text(min_size=1, max_size=6), JSON_VALUE, max_size=4)
TOOL_CALL = st.builds(lambda name, args: {"function": {"name": name, "arguments": args}},
                      st.text(min_size=1, max_size=10), ARGUMENTS)


class _Protocol(BaseProtocol):
    """Enough of a connection for the reader to wait on: never paused for real (the test feeds it)."""

    def pause_reading(self, *args: object, **kwargs: object) -> None:
        pass

    def resume_reading(self, *args: object, **kwargs: object) -> None:
        pass


@st.composite
def ndjson_streams(draw: st.DrawFn, chat: bool) -> tuple[list[dict[str, Any]], bytes]:
    """Ollama's lines (pieces then the ``done`` line) and their bytes, with blank lines, CRLFs and
    non-ASCII characters (written raw or escaped) where Ollama or a proxy might put them."""
    pieces: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 6))):
        if chat and draw(st.booleans()) and draw(st.booleans()):
            message = {"role": "assistant", "content": "", "tool_calls": draw(st.lists(TOOL_CALL, min_size=1,
                                                                                            max_size=2))}
            pieces.append({"model": "m", "done": False, "message": message})
        elif chat:
            pieces.append({"model": "m", "done": False, "message": {"role": "assistant", "content": draw(TEXT)}})
        else:
            pieces.append({"model": "m", "done": False, "response": draw(TEXT)})
    final: dict[str, Any] = {"model": "m", "done": True, "done_reason": draw(st.sampled_from(["stop", "length"])),
                             "prompt_eval_count": draw(st.integers(0, 5000)), "eval_count": draw(st.integers(0, 5000))}
    final["message" if chat else "response"] = {"role": "assistant", "content": ""} if chat else ""
    lines = [*pieces, final]
    raw = b""
    for line in lines:
        encoded = json.dumps(line, ensure_ascii=draw(st.booleans())).encode()
        raw += draw(st.sampled_from([b"", b"\n", b"\r\n"])) if draw(st.booleans()) else b""  # blank lines
        raw += encoded + draw(st.sampled_from([b"\n", b"\r\n"]))
    return lines, raw


class _Response:
    """What the translator uses of aiohttp's ``ClientResponse``: ``content``, ``release``, ``close``."""

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self.content = content

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


async def _translate(pieces: list[bytes], chat: bool, include_usage: bool) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    protocol = _Protocol(loop)
    protocol.connection_made(asyncio.Transport())
    reader = aiohttp.StreamReader(protocol, 2**16, loop=loop)

    async def feed() -> None:
        for piece in pieces:
            reader.feed_data(piece)
            await asyncio.sleep(0)  # the translator reads what is in before the next piece arrives
        reader.feed_eof()

    body: dict[str, Any] = {"model": "public", "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    call = Call("chat" if chat else "completions", body)
    translator = _ChatTranslator(call) if chat else _TextTranslator(call)
    feeding = asyncio.ensure_future(feed())
    stream = Stream(lambda s: translator.relay(_Response(reader), s))  # type: ignore[arg-type]
    blocks = [block async for block in stream]
    await feeding
    payloads = [p for block in blocks for p in iter_sse_data(block)]
    assert is_done(payloads[-1]), "the stream ends with [DONE]"
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    for chunk in chunks:  # fresh per translation: not part of what is compared
        assert chunk.pop("id").startswith("chatcmpl-" if chat else "cmpl-")
        assert isinstance(chunk.pop("created"), int)
    return chunks


def translate(pieces: list[bytes], chat: bool, include_usage: bool = True) -> list[dict[str, Any]]:
    return asyncio.run(_translate(pieces, chat, include_usage))


def _content(chunks: list[dict[str, Any]], chat: bool) -> str:
    key = "content" if chat else "text"
    return "".join(
        (choice["delta"] if chat else choice).get(key) or "" for chunk in chunks for choice in chunk["choices"]
    )


@st.composite
def chat_case(draw: st.DrawFn) -> tuple[list[dict[str, Any]], bytes, list[bytes]]:
    lines, raw = draw(ndjson_streams(chat=True))
    return lines, raw, draw(cuts(raw))


@st.composite
def text_case(draw: st.DrawFn) -> tuple[list[dict[str, Any]], bytes, list[bytes]]:
    lines, raw = draw(ndjson_streams(chat=False))
    return lines, raw, draw(cuts(raw))


@PROPERTY
@given(chat_case())
def test_chat_any_cut_gives_the_chunks_of_the_whole(case: tuple[list[dict[str, Any]], bytes, list[bytes]]) -> None:
    lines, raw, pieces = case
    whole = translate([raw], chat=True)
    assert translate(pieces, chat=True) == whole
    assert translate([raw[i:i + 1] for i in range(len(raw))], chat=True) == whole

    assert _content(whole, chat=True) == "".join(line["message"]["content"] for line in lines)
    sent = [call["function"] for line in lines for call in line["message"].get("tool_calls", [])]
    got = [call["function"] for chunk in whole for choice in chunk["choices"]
           for call in choice["delta"].get("tool_calls", [])]
    assert [(f["name"], json.loads(f["arguments"])) for f in got] == [(f["name"], f["arguments"]) for f in sent]

    final, usage = whole[-2], whole[-1]
    assert final["choices"][0]["finish_reason"] == (
        "tool_calls" if sent else "length" if lines[-1]["done_reason"] == "length" else "stop")
    assert usage["choices"] == []
    assert usage["usage"]["prompt_tokens"] == lines[-1]["prompt_eval_count"]
    assert usage["usage"]["completion_tokens"] == lines[-1]["eval_count"]
    assert all(chunk["object"] == "chat.completion.chunk" and chunk["model"] == "public" for chunk in whole)


@PROPERTY
@given(text_case())
def test_text_any_cut_gives_the_chunks_of_the_whole(case: tuple[list[dict[str, Any]], bytes, list[bytes]]) -> None:
    lines, raw, pieces = case
    whole = translate([raw], chat=False)
    assert translate(pieces, chat=False) == whole
    assert _content(whole, chat=False) == "".join(line["response"] for line in lines)
    final, usage = whole[-2], whole[-1]
    assert final["choices"][0]["finish_reason"] == ("length" if lines[-1]["done_reason"] == "length" else "stop")
    assert usage["usage"]["completion_tokens"] == lines[-1]["eval_count"]
    assert all(chunk["object"] == "text_completion" for chunk in whole)


@PROPERTY
@given(chat_case())
def test_without_include_usage_no_usage_chunk(case: tuple[list[dict[str, Any]], bytes, list[bytes]]) -> None:
    _, _, pieces = case
    chunks = translate(pieces, chat=True, include_usage=False)
    assert all("usage" not in chunk for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")


@PROPERTY
@given(st.lists(TEXT, max_size=5), st.lists(TOOL_CALL, max_size=2))
def test_a_whole_answer_keeps_its_text_and_arguments(texts: list[str], calls: list[dict[str, Any]]) -> None:
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
    line = {"model": "m", "done": True, "done_reason": "stop", "prompt_eval_count": 3, "eval_count": 4,
            "message": message}
    body = orjson.loads(_ChatTranslator(Call("chat", {"model": "public"})).completion(orjson.dumps(line)).body)
    choice = body["choices"][0]
    assert choice["message"]["content"] == "".join(texts)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in choice["message"].get("tool_calls", [])] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in calls]
    assert choice["finish_reason"] == ("tool_calls" if calls else "stop")


def test_a_line_longer_than_aiohttp_reads_at_once_comes_through() -> None:
    # A tool call comes whole in one NDJSON line: 200 KB of arguments broke the stream with aiohttp's
    # LineTooLong (readline's limit is 128 KiB), an error the translator did not map.
    arguments = {"text": "x" * 200_000}
    lines = [{"model": "m", "done": False, "message": {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "write", "arguments": arguments}}]}},
        {"model": "m", "done": True, "done_reason": "stop", "prompt_eval_count": 1, "eval_count": 1,
         "message": {"role": "assistant", "content": ""}}]
    raw = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    for pieces in ([raw], [raw[i:i + 65536] for i in range(0, len(raw), 65536)]):
        chunks = translate(pieces, chat=True)
        call = chunks[1]["choices"][0]["delta"]["tool_calls"][0]["function"]
        assert json.loads(call["arguments"]) == arguments
