"""Escalation checks: is a tier's answer one a larger model should be asked for instead?

- ``empty``: no text and no tool calls.
- ``refusal``: the message's ``refusal`` field, or a text that opens with a refusal.
- ``invalid_json``: the request asked for ``response_format`` JSON and the text does not parse.

A finished answer is checked whole (``answer_problem``). A stream is checked from its first blocks,
held back from the client until the check can tell (``StreamPeek``): the first ``PEEK_CHARS`` of
text for the refusal check, its first character for JSON (an object must open with ``{``), the whole
stream when it ends sooner. Tool calls pass every check.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

import orjson

from tokenway.protocol import is_done, iter_sse_data
from tokenway.tiers.options import Check
from tokenway.validation.replies import JSON_FORMATS

PEEK_CHARS = 48  # text held back from a stream for the refusal check: enough for "I'm sorry, but I can't ..."

_REFUSAL = re.compile(
    r"^\W*((i'?m|i am) sorry,? (but )?(i|that)\b.{0,20}?(can'?t|cannot|unable|won'?t|not able)"
    r"|sorry,? (but )?i (can'?t|cannot|won'?t|am unable)|i can(no|')t (help|assist|do|provide|answer|comply)"
    r"|i('m| am) (unable|not able) to|i won'?t be able|as an ai\b|unfortunately,? i (can'?t|cannot|am unable))",
    re.IGNORECASE)


def wants_json(body: dict[str, Any]) -> bool:
    response_format = body.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") in JSON_FORMATS


def text_problem(text: str, refusal: str | None, json: bool, checks: Collection[Check], finished: bool) -> Check | None:
    """What is wrong with an answer's text (None: nothing the configured checks see). ``finished``:
    the whole text is in hand, else only its start."""
    if "refusal" in checks and (refusal or _REFUSAL.match(text.replace("\u2019", "'"))):  # a typographic apostrophe too
        return "refusal"
    stripped = text.lstrip()
    if "empty" in checks and finished and not stripped:
        return "empty"
    if "invalid_json" in checks and json and stripped:
        if stripped[0] not in "{[":
            return "invalid_json"
        if finished:
            try:
                orjson.loads(stripped)
            except orjson.JSONDecodeError:
                return "invalid_json"
    return None


def answer_problem(body: bytes, json: bool, checks: Collection[Check]) -> Check | None:
    """The check a finished chat or completions answer fails, if any. An answer that is not a
    completion object (a provider's own shape) is not judged."""
    try:
        choice = orjson.loads(body)["choices"][0]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
    message = choice.get("message") if isinstance(choice, dict) else None
    if isinstance(message, dict):
        if message.get("tool_calls") or message.get("function_call"):
            return None
        text, refusal = message.get("content"), message.get("refusal")
    elif isinstance(choice, dict):
        text, refusal = choice.get("text"), None
    else:
        return None
    return text_problem(text if isinstance(text, str) else "", refusal, json, checks, finished=True)


class StreamPeek:
    """Reads a stream's first blocks, as they come, until the checks can tell."""

    __slots__ = ("_checks", "_json", "_refusal", "_text", "_tools", "ended", "problem")

    def __init__(self, json: bool, checks: Collection[Check]) -> None:
        self._json, self._checks = json, checks
        self._text: list[str] = []
        self._refusal: str | None = None
        self._tools = False
        self.ended = False  # [DONE] was seen
        self.problem: Check | None = None

    def feed(self, block: bytes) -> bool:
        """Take one block; True once the verdict (``problem``) is known."""
        for payload in iter_sse_data(block):
            if is_done(payload):
                self.ended = True
                continue
            self._read(payload)
        return self.verdict(finished=self.ended)

    def verdict(self, finished: bool) -> bool:
        """Judge now if enough was seen (or ``finished``: the stream is over); True when judged."""
        if self._tools:
            return True
        text = "".join(self._text)
        enough = finished or self._refusal is not None or len(text) >= PEEK_CHARS or (
            "refusal" not in self._checks and bool(text.strip()))
        if enough:
            self.problem = text_problem(text, self._refusal, self._json, self._checks, finished)
        return enough

    def _read(self, payload: bytes) -> None:
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        choices = event.get("choices") if isinstance(event, dict) else None
        if not choices or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if delta.get("tool_calls") or delta.get("function_call"):
                self._tools = True
            if isinstance(delta.get("refusal"), str) and delta["refusal"]:
                self._refusal = (self._refusal or "") + delta["refusal"]
            piece = delta.get("content")
        else:
            piece = choice.get("text")
        if isinstance(piece, str):
            self._text.append(piece)
