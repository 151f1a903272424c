"""Output guards on a stream, chunk by chunk, with a bounded look-behind.

Each text channel of a stream (a choice's ``content``, a completion choice's ``text``, one tool
call's ``arguments``) keeps back its last ``lookbehind`` characters: a pattern split across two
chunks ("bob@exa" + "mple.com") is found whole once the second arrives. The release point is a
space, so a word is not cut in two; inside one long word (a key, a token) the whole word is held,
up to four times the look-behind. What is released is scanned with the held tail as context: a
match that starts in the released part and runs into the held one is released whole, masked, and
if it runs to the end of what has arrived, the rest of its word in later chunks is dropped too.
Nothing waits longer than ``lookbehind`` characters of later output (four times that inside one
word), and the held text goes out with the choice's ``finish_reason`` chunk (or in one last chunk
before ``[DONE]``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson

from tokenway.guards.base import GuardBlocked, Report, TextGuard, masked
from tokenway.guards.options import MaxOutputCheck
from tokenway.protocol import SSE_DONE, iter_sse_data, sse_events

Channel = tuple[int, str, int]
_WORD_START = re.compile(r"\S*")  # (choice index, "content" | "text" | "tool", tool call index)


class StreamGuard:
    """Rewrites the blocks of one stream (canonical SSE, see ``tokenway.protocol``)."""

    def __init__(
        self, guards: Sequence[TextGuard], lengths: Sequence[MaxOutputCheck], lookbehind: int, report: Report,
    ) -> None:
        self._guards = guards
        self._lengths = lengths
        # A term or pattern longer than the look-behind could be split past it: hold at least that much.
        self._lookbehind = lookbehind
        self._report = report
        self._held: dict[Channel, str] = {}
        self._sent: dict[int, int] = {}  # characters of text sent per choice, for max_output_chars
        self._cut: set[int] = set()  # choices cut at a length limit: the rest of their text is dropped
        self._open: set[Channel] = set()  # channels whose last release ended inside a masked word
        self._last: dict[str, Any] = {}  # id, object, created, model of the last chunk, for a closing chunk

    def feed(self, block: bytes) -> bytes:
        """The block as the client should get it (raises ``GuardBlocked`` for a blocking match)."""
        out = []
        for payload in iter_sse_data(block):
            if payload == b"[DONE]":
                closing = self._closing_chunk()
                if closing is not None:
                    out.append(orjson.dumps(closing))
                out.append(payload)
                continue
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                out.append(payload)  # not ours to judge (an error event the upstream sent, say)
                continue
            if isinstance(chunk, dict) and isinstance(chunk.get("choices"), list):
                self._chunk(chunk)
                out.append(orjson.dumps(chunk))
            else:
                out.append(payload)
        if not out:
            return b""
        if out[-1] == b"[DONE]":
            return (sse_events(out[:-1]) if len(out) > 1 else b"") + SSE_DONE
        return sse_events(out)

    def finish(self) -> bytes:
        """For a stream that ended without ``[DONE]``: a last event with the text still held, or ``b""``."""
        closing = self._closing_chunk()
        return sse_events([orjson.dumps(closing)]) if closing is not None else b""

    def _chunk(self, chunk: dict[str, Any]) -> None:
        self._last = {k: chunk.get(k) for k in ("id", "object", "created", "model")}
        for choice in chunk["choices"]:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index") or 0
            final = choice.get("finish_reason") is not None
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(index, delta, final)
            elif isinstance(choice.get("text"), str) or (final and (index, "text", 0) in self._held):
                choice["text"] = self._text(index, "text", 0, choice.get("text") or "", final)

    def _delta(self, index: int, delta: dict[str, Any], final: bool) -> None:
        if isinstance(delta.get("content"), str) or (final and (index, "content", 0) in self._held):
            delta["content"] = self._text(index, "content", 0, delta.get("content") or "", final)
        calls = delta.get("tool_calls")
        seen = set()
        if isinstance(calls, list):
            for call in calls:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    number = call.get("index") or 0
                    seen.add(number)
                    function["arguments"] = self._text(index, "tool", number, function["arguments"], final)
        if final:  # tool calls with text still held and no delta in this chunk
            rest = [{"index": n, "function": {"arguments": self._text(index, "tool", n, "", True)}}
                    for (i, kind, n) in list(self._held) if i == index and kind == "tool" and n not in seen]
            if rest:
                delta["tool_calls"] = [*(calls or []), *rest]

    def _text(self, index: int, kind: str, number: int, text: str, final: bool) -> str:
        key = (index, kind, number)
        if key in self._open:  # the rest of a word masked in an earlier chunk is dropped, up to a space
            cut = _WORD_START.match(text).end()  # type: ignore[union-attr]  # matches the empty string too
            text = text[cut:]
            if text or final:
                self._open.discard(key)
        pending = self._held.pop(key, "") + text
        if not self._guards:  # only length limits: nothing to hold back
            return self._limited(index, pending) if kind != "tool" else pending
        release = len(pending) if final else self._release_point(pending)
        out, rest, open_end = self._guarded(pending, release)
        if rest:
            self._held[key] = rest
        elif open_end and not final:
            self._open.add(key)
        return self._limited(index, out) if kind != "tool" else out

    def _release_point(self, pending: str) -> int:
        """Where to cut: at the first space in the last ``lookbehind`` characters; inside one long word
        (a token, a key), at that word's start, holding up to four times the look-behind; past that,
        in the word (a match running to the end of what arrived is then dropped to its end)."""
        cut = len(pending) - self._lookbehind
        if cut <= 0:
            return 0
        for i in range(cut, len(pending)):
            if pending[i].isspace():
                return i
        floor = max(0, len(pending) - 4 * self._lookbehind)
        for i in range(cut - 1, floor - 1, -1):
            if pending[i].isspace():
                return i + 1
        return cut if floor > 0 else 0

    def _guarded(self, pending: str, release: int) -> tuple[str, str, bool]:
        """The released text after every guard, the text still held, and whether a masked match ran
        to the end of what has arrived (its word may go on in the next chunk: a token longer than the
        look-behind). A match that starts before ``release`` and ends after it is released whole."""
        open_end = False
        text = pending
        for guard in self._guards:
            spans = [span for span in guard.finder.find(text) if span.start < release]
            if not spans:
                continue
            kinds = [span.kind for span in spans]
            self._report(guard.name, "output", guard.action, Counter(kinds))
            if guard.action == "block":
                raise GuardBlocked(guard.name, "output", kinds)
            release = max(release, spans[-1].end)
            if guard.action == "mask":
                open_end = open_end or spans[-1].end == len(text)
                grown = len(text)
                text = masked(text, spans)
                release += len(text) - grown
        return text[:release], text[release:], open_end

    def _limited(self, index: int, text: str) -> str:
        if not self._lengths or not text:
            return text
        if index in self._cut:
            return ""
        sent = self._sent.get(index, 0) + len(text)
        for check in self._lengths:
            if sent <= check.limit:
                continue
            self._report("max_output_chars", "output", check.action, Counter(chars=1))
            if check.action == "block":
                raise GuardBlocked("max_output_chars", "output", [f"more than {check.limit} characters"])
            if check.action == "mask":
                self._cut.add(index)
                text = text[: max(0, check.limit - self._sent.get(index, 0))]
                sent = check.limit
        self._sent[index] = sent
        return text

    def _closing_chunk(self) -> dict[str, Any] | None:
        """A last chunk with whatever text is still held (a stream that ended without a finish reason)."""
        if not self._held or not self._last:
            return None
        choices: dict[int, dict[str, Any]] = {}
        for index, kind, number in list(self._held):
            text = self._text(index, kind, number, "", True)
            if kind == "text":
                choices[index] = {"index": index, "text": text, "finish_reason": None}
                continue
            delta = choices.setdefault(index, {"index": index, "delta": {}, "finish_reason": None})["delta"]
            if kind == "content":
                delta["content"] = text
            else:
                delta.setdefault("tool_calls", []).append({"index": number, "function": {"arguments": text}})
        return {**self._last, "choices": list(choices.values())}
