"""Output guards on a stream, in process: look-behind across chunks, its bound, tool-call arguments,
length limits, and the held text at the end."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from tokenway.guards.base import GuardBlocked, TextGuard
from tokenway.guards.options import MaxOutputCheck
from tokenway.guards.pii import PiiFinder
from tokenway.guards.stream_guard import StreamGuard
from tokenway.guards.terms import TermsFinder
from tokenway.protocol import SSE_DONE, iter_sse_data, sse_event


def chunk(content: str | None = None, finish: str | None = None, tools: list[dict[str, Any]] | None = None,
          index: int = 0) -> bytes:
    delta: dict[str, Any] = {}
    if content is not None:
        delta["content"] = content
    if tools is not None:
        delta["tool_calls"] = tools
    return sse_event({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                      "choices": [{"index": index, "delta": delta, "finish_reason": finish}]})


def guard(action: str = "mask", lookbehind: int = 64, lengths: list[MaxOutputCheck] | None = None,
          report: Any = None) -> StreamGuard:
    guards = [TextGuard("pii", action, PiiFinder())]  # type: ignore[arg-type]
    return StreamGuard(guards, lengths or [], lookbehind, report or (lambda *a: None))


def texts(blocks: list[bytes]) -> tuple[str, list[str]]:
    """The content of every chunk in ``blocks`` joined, and the content each chunk carried."""
    pieces = []
    for block in blocks:
        for payload in iter_sse_data(block):
            if payload == b"[DONE]":
                continue
            for choice in json.loads(payload)["choices"]:
                pieces.append(choice["delta"].get("content") or "")
    return "".join(pieces), pieces


def test_an_email_split_across_two_chunks_is_masked() -> None:
    g = guard()
    out = [g.feed(chunk("Write to bob.smith@exa")), g.feed(chunk("mple.com and wait.")),
           g.feed(chunk(finish="stop")), g.feed(SSE_DONE)]
    whole, _ = texts(out)
    assert whole == "Write to [EMAIL] and wait."
    assert out[-1].endswith(SSE_DONE)


def test_a_secret_split_across_chunks_in_a_long_answer_is_masked() -> None:
    g = guard()
    text = "Here is a long explanation of how to call the API. " * 4 + "Use AKIAIOSFODNN7EXAMPLE as the key. " * 2
    pieces = [text[i:i + 7] for i in range(0, len(text), 7)]  # every split point, over many chunks
    out = [g.feed(chunk(piece)) for piece in pieces] + [g.feed(chunk(finish="stop")), g.feed(SSE_DONE)]
    whole, _ = texts(out)
    assert whole == text.replace("AKIAIOSFODNN7EXAMPLE", "[SECRET]")


def test_nothing_is_held_back_longer_than_the_lookbehind() -> None:
    g = guard(lookbehind=16)
    sent = 0
    given = 0
    for word in ["lorem ipsum dolor sit amet "] * 20:
        _, pieces = texts([g.feed(chunk(word))])
        sent += sum(len(p) for p in pieces)
        given += len(word)
        assert 0 <= given - sent <= 16
    assert sent > 0


def test_tool_call_arguments_are_guarded_per_call() -> None:
    g = guard()
    first = [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "send", "arguments": ""}}]
    blocks = [g.feed(chunk(tools=first)),
              g.feed(chunk(tools=[{"index": 0, "function": {"arguments": '{"to": "alice@exam'}}])),
              g.feed(chunk(tools=[{"index": 0, "function": {"arguments": 'ple.org"}'}}])),
              g.feed(chunk(finish="tool_calls")), g.feed(SSE_DONE)]
    arguments = ""
    for block in blocks:
        for payload in iter_sse_data(block):
            if payload != b"[DONE]":
                for call in json.loads(payload)["choices"][0]["delta"].get("tool_calls") or []:
                    arguments += call["function"].get("arguments") or ""
    assert json.loads(arguments) == {"to": "[EMAIL]"}


def test_block_raises_on_the_chunk_that_completes_the_match() -> None:
    g = guard(action="block")
    g.feed(chunk("my card is 4111 1111 "))
    with pytest.raises(GuardBlocked) as caught:
        g.feed(chunk("1111 1111, thanks"))
        g.feed(chunk(finish="stop"))
    assert caught.value.code == "guard_blocked" and caught.value.stage == "output"


def test_flag_reports_once_per_match_and_changes_nothing() -> None:
    seen: list[Counter[str]] = []
    g = guard(action="flag", report=lambda name, stage, action, kinds: seen.append(kinds))
    whole, _ = texts([g.feed(chunk("mail bob@example.com")), g.feed(chunk(" now", "stop")), g.feed(SSE_DONE)])
    assert whole == "mail bob@example.com now"
    assert sum(seen, Counter()) == Counter(email=1)


def test_max_output_chars_mask_cuts_the_text() -> None:
    g = StreamGuard([], [MaxOutputCheck(check="max_output_chars", limit=10, action="mask")], 64, lambda *a: None)
    whole, _ = texts([g.feed(chunk("0123456")), g.feed(chunk("789abcdef")), g.feed(chunk("more", "stop"))])
    assert whole == "0123456789"


def test_max_output_chars_block() -> None:
    g = StreamGuard([], [MaxOutputCheck(check="max_output_chars", limit=10, action="block")], 64, lambda *a: None)
    g.feed(chunk("0123456"))
    with pytest.raises(GuardBlocked):
        g.feed(chunk("789abcdef"))


def test_held_text_goes_out_before_done_when_no_finish_reason_came() -> None:
    g = guard()
    out = [g.feed(chunk("short answer")), g.feed(SSE_DONE)]
    whole, _ = texts(out)
    assert whole == "short answer" and out[-1].endswith(SSE_DONE)
    g = guard()
    g.feed(chunk("ended without done"))
    assert texts([g.finish()])[0] == "ended without done"


def test_a_blocked_term_longer_than_the_lookbehind_is_held_whole() -> None:
    term = "a very long forbidden phrase indeed"
    finder = TermsFinder([term])
    g = StreamGuard([TextGuard("blocked_terms", "mask", finder)], [], finder.longest + 1, lambda *a: None)
    words = ("x " * 30 + term + " y").split(" ")
    out = [g.feed(chunk(w + " ")) for w in words] + [g.feed(chunk(finish="stop"))]
    assert "[REDACTED]" in texts(out)[0] and "forbidden" not in texts(out)[0]


def test_choices_are_guarded_apart() -> None:
    g = guard()
    blocks = [g.feed(chunk("bob@exa", index=0)), g.feed(chunk("carol@exa", index=1)),
              g.feed(chunk("mple.com", "stop", index=0)), g.feed(chunk("mple.com", "stop", index=1))]
    by_choice: dict[int, str] = {}
    for block in blocks:
        for payload in iter_sse_data(block):
            for choice in json.loads(payload)["choices"]:
                by_choice[choice["index"]] = by_choice.get(choice["index"], "") + (choice["delta"].get("content") or "")
    assert by_choice == {0: "[EMAIL]", 1: "[EMAIL]"}


@pytest.mark.parametrize("lookbehind", [64, 16])  # the word held whole; the word longer than 4x: cut, rest dropped
def test_a_secret_longer_than_the_lookbehind_leaves_no_tail(lookbehind: int) -> None:
    token = "github_pat_" + "A1b2C3d4E5" * 8  # 91 characters
    g = guard(lookbehind=lookbehind)
    text = f"Your token is {token} and nothing else."
    out = [g.feed(chunk(text[i:i + 10])) for i in range(0, len(text), 10)]
    out += [g.feed(chunk(finish="stop")), g.feed(SSE_DONE)]
    assert texts(out)[0] == "Your token is [SECRET] and nothing else."
