"""What a cache entry holds, and how it becomes an answer again.

An entry is one finished answer in its non-streaming form: the completion JSON as the client
would have received it. A streamed answer is assembled into that form once, when it ends; a
streaming request is served from any entry by re-chunking it (role, content, tool calls,
finish, optional usage, ``[DONE]``), so either kind of request can be served by either kind of
answer. On disk (Redis) and in memory it is bytes: a small JSON header line, then the body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from tokenway.protocol import SSE_DONE, Usage, is_done, iter_sse_data, sse_event

_SEPARATOR = b"\n"  # orjson never writes a raw newline, so the first one ends the header


@dataclass(slots=True)
class Entry:
    kind: str  # chat | completions
    body: bytes  # the non-streaming response body
    usage: Usage | None  # what the original call cost; hits are served at zero cost
    text: str | None = None  # the question, for semantic verification of later neighbours

    def encode(self) -> bytes:
        header = {"kind": self.kind, "usage": self.usage.as_dict() if self.usage else None, "text": self.text}
        return orjson.dumps(header) + _SEPARATOR + self.body

    @classmethod
    def decode(cls, raw: bytes) -> Entry:
        head, _, body = raw.partition(_SEPARATOR)
        header = orjson.loads(head)
        usage = Usage.from_openai(header.get("usage"))
        return cls(kind=header["kind"], body=body, usage=usage, text=header.get("text"))


class Uncacheable(Exception):
    """A stream that must not be stored: an error event, no [DONE], or a choice without an end."""


def assemble(kind: str, blocks: list[bytes], usage: Usage | None) -> bytes:
    """The non-streaming body equivalent to a complete SSE stream of ``kind``."""
    head: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    done = False
    for block in blocks:
        for data in iter_sse_data(block):
            if is_done(data):
                done = True
                continue
            chunk = orjson.loads(data)
            if not isinstance(chunk, dict) or "error" in chunk:
                raise Uncacheable("the stream carried an error")
            if not head:
                head = {k: chunk[k] for k in ("id", "created", "model", "system_fingerprint") if k in chunk}
            for choice in chunk.get("choices") or []:
                _merge(kind, choices.setdefault(int(choice.get("index", 0)), {}), choice)
    if not done or not choices or any(c.get("finish_reason") is None for c in choices.values()):
        raise Uncacheable("the stream did not finish")
    body: dict[str, Any] = {
        "id": head.get("id", ""),
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": head.get("created", 0),
        "model": head.get("model", ""),
        "choices": [_finish(kind, i, choices[i]) for i in sorted(choices)],
    }
    if "system_fingerprint" in head:
        body["system_fingerprint"] = head["system_fingerprint"]
    if usage is not None:
        body["usage"] = usage.as_dict()
    return orjson.dumps(body)


def _merge(kind: str, state: dict[str, Any], choice: dict[str, Any]) -> None:
    if choice.get("finish_reason") is not None:
        state["finish_reason"] = choice["finish_reason"]
    logprobs = choice.get("logprobs")
    if kind == "completions":
        state["text"] = state.get("text", "") + (choice.get("text") or "")
        if logprobs:
            state.setdefault("logprobs", []).append(logprobs)
        return
    delta = choice.get("delta") or {}
    if delta.get("role"):
        state["role"] = delta["role"]
    for field in ("content", "refusal", "reasoning_content"):
        if delta.get(field):
            state[field] = state.get(field, "") + delta[field]
    for call in delta.get("tool_calls") or []:
        slot = state.setdefault("tool_calls", {}).setdefault(int(call.get("index", 0)), {"function": {}})
        for key in ("id", "type"):
            if call.get(key):
                slot[key] = call[key]
        function = call.get("function") or {}
        for key in ("name", "arguments"):
            if function.get(key):
                slot["function"][key] = slot["function"].get(key, "") + function[key]
    if logprobs and logprobs.get("content"):
        state.setdefault("logprobs", []).extend(logprobs["content"])


def _finish(kind: str, index: int, state: dict[str, Any]) -> dict[str, Any]:
    if kind == "completions":
        logprobs = state.get("logprobs")
        return {"index": index, "text": state.get("text", ""), "logprobs": logprobs[-1] if logprobs else None,
                "finish_reason": state["finish_reason"]}
    message: dict[str, Any] = {"role": state.get("role", "assistant"), "content": state.get("content")}
    for field in ("refusal", "reasoning_content"):
        if field in state:
            message[field] = state[field]
    if "tool_calls" in state:
        message["tool_calls"] = [
            {"id": c.get("id", ""), "type": c.get("type", "function"),
             "function": {"name": c["function"].get("name", ""), "arguments": c["function"].get("arguments", "")}}
            for _, c in sorted(state["tool_calls"].items())
        ]
    logprobs = {"content": state["logprobs"]} if "logprobs" in state else None
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": state["finish_reason"]}


def as_sse(entry: Entry, include_usage: bool) -> bytes:
    """The whole answer as one block of SSE events, shaped like the backend's own chunks."""
    body = orjson.loads(entry.body)
    head = {"id": body.get("id", ""), "object": "chat.completion.chunk" if entry.kind == "chat" else "text_completion",
            "created": body.get("created", 0), "model": body.get("model", "")}
    if "system_fingerprint" in body:
        head["system_fingerprint"] = body["system_fingerprint"]
    events: list[bytes] = []
    for choice in body.get("choices") or []:
        index = choice.get("index", 0)
        if entry.kind == "completions":
            text = {"index": index, "text": choice.get("text", ""), "logprobs": choice.get("logprobs"),
                    "finish_reason": None}
            events.append(sse_event({**head, "choices": [text]}))
        else:
            events.extend(_chat_events(head, index, choice))
        events.append(sse_event({**head, "choices": [
            {"index": index, **({"delta": {}} if entry.kind == "chat" else {"text": ""}), "logprobs": None,
             "finish_reason": choice.get("finish_reason")}]}))
    if include_usage:
        usage = body.get("usage") or (entry.usage.as_dict() if entry.usage else Usage().as_dict())
        events.append(sse_event({**head, "choices": [], "usage": usage}))
    events.append(SSE_DONE)
    return b"".join(events)


def _chat_events(head: dict[str, Any], index: int, choice: dict[str, Any]) -> list[bytes]:
    message = choice.get("message") or {}

    def event(delta: dict[str, Any], logprobs: Any = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": None}
        return sse_event({**head, "choices": [choice]})

    out = [event({"role": message.get("role", "assistant"), "content": ""})]
    for field in ("reasoning_content", "refusal"):
        if message.get(field):
            out.append(event({field: message[field]}))
    if message.get("content"):
        out.append(event({"content": message["content"]}, choice.get("logprobs")))
    calls = message.get("tool_calls") or []
    if calls:
        out.append(event({"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]}))
    return out


async def replay(block: bytes) -> AsyncIterator[bytes]:
    yield block
