"""OpenAI's wire format: the request schemas (re-exported), usage, response and chunk builders, SSE framing.

What a valid request is lives in ``request_schema`` (the schemas and the rules between fields,
validated in one pydantic-core pass from bytes) and ``request_errors`` (the 400 that names the
field); the names are re-exported here, where the rest of the wire format is.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from tokenway.errors import UpstreamError
from tokenway.request_schema import (
    CHAT_REQUEST,
    COMPLETION_REQUEST,
    SIMPLE_CHAT_REQUEST,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ResponseFormat,
    SimpleChatRequest,
    parse_body,
)

__all__ = [
    "CHAT_REQUEST", "COMPLETION_REQUEST", "SIMPLE_CHAT_REQUEST", "SSE_DONE", "SSE_HEARTBEAT", "ChatCompletionRequest",
    "ChatMessage", "CompletionRequest", "ResponseFormat", "SSEDecoder", "SimpleChatRequest", "Usage", "chat_choice",
    "chat_chunk", "chat_completion", "ends_stream", "first_choice", "is_done", "iter_sse_data", "new_id", "parse_body",
    "sse_data", "sse_error", "sse_event", "sse_events", "text_choice", "text_chunk", "text_completion",
]


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cached_tokens:
            out["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return out

    @classmethod
    def from_openai(cls, raw: Any) -> Usage | None:
        if not isinstance(raw, dict):
            return None
        details = raw.get("prompt_tokens_details") or {}
        return cls(
            prompt_tokens=int(raw.get("prompt_tokens") or 0),
            completion_tokens=int(raw.get("completion_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0,
        )

    @classmethod
    def from_responses(cls, raw: Any) -> Usage | None:
        """The Responses API's usage (``input_tokens``, ``output_tokens``, ``input_tokens_details``)."""
        if not isinstance(raw, dict):
            return None
        details = raw.get("input_tokens_details") or {}
        return cls(
            prompt_tokens=int(raw.get("input_tokens") or 0),
            completion_tokens=int(raw.get("output_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0,
        )


# ---- SSE framing ----------------------------------------------------------------------------
#
# Every stream inside the gateway is canonical: each event is ``data: <payload>\n\n`` (a payload
# of several lines gets a ``data: `` line each), and the stream ends with ``SSE_DONE``. Upstream
# bytes are decoded once, by ``SSEDecoder`` in the OpenAI-compatible relay, which hands them on
# in that framing; the other providers, the cache and the gateway's own events write canonical
# events to begin with. So a consumer of a ``Stream`` finds its payloads with ``iter_sse_data``
# and its end with ``ends_stream``, and nothing else matches SSE bytes itself.

SSE_DONE = b"data: [DONE]\n\n"
SSE_HEARTBEAT = b": keep-alive\n\n"


def sse_data(payload: bytes) -> bytes:
    """One canonical event carrying ``payload``."""
    if _LF in payload:
        payload = payload.replace(b"\n", b"\ndata: ")
    return b"data: " + payload + b"\n\n"


def sse_event(payload: dict[str, Any]) -> bytes:
    return sse_data(orjson.dumps(payload))


def sse_events(payloads: list[bytes]) -> bytes:
    """Canonical events carrying ``payloads``, as one block."""
    if not payloads:
        return b""
    if _LF in b"".join(payloads):  # a payload of several lines
        return b"".join([sse_data(payload) for payload in payloads])
    return b"data: " + b"\n\ndata: ".join(payloads) + b"\n\n"


def sse_error(error: Exception) -> bytes:
    """An error event in the middle of a stream (what OpenAI sends; the SDK raises on it)."""
    envelope = getattr(error, "envelope", None)
    body = envelope() if callable(envelope) else orjson.dumps({"error": {"message": str(error), "type": "api_error"}})
    return sse_data(body)


def is_done(payload: bytes) -> bool:
    """Whether an event's payload is the end-of-stream marker ``[DONE]``."""
    return payload == b"[DONE]"


def ends_stream(block: bytes) -> bool:
    """Whether a block of a ``Stream`` (canonical events) ends with ``[DONE]``: nothing follows it."""
    return block.endswith(SSE_DONE)


def iter_sse_data(block: bytes) -> list[bytes]:
    """The payloads of the events in ``block``, a whole number of events in any framing (the blank
    line after the last one may be missing)."""
    if _CR in block:
        block = _to_lf(block)
    return _payloads(block)


# The event that ends a Responses stream: the response's last state, or an error. Such streams end
# with it, not with ``[DONE]``. A JSON string cannot hold a bare quote: generated text never matches.
_RESPONSE_END = re.compile(rb'"type"\s*:\s*"(?:response\.(?:completed|incomplete|failed)|error)"')


def response_end(block: bytes) -> dict[str, Any] | None:
    """The event of ``block`` (a Responses stream's whole events) that ends the stream, if it holds one."""
    if not _RESPONSE_END.search(block):
        return None
    for data in iter_sse_data(block):
        if _RESPONSE_END.search(data):
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict):
                return event
    return None


class SSEDecoder:
    """Server-sent events in any framing, from a byte stream that arrives in pieces of any size.

    ``feed`` each piece; it returns the events the piece completed, framed canonically, as one
    block (``b""`` when it completed none; ``iter_sse_data`` gives their payloads). Lines may end
    in ``\\r\\n``, ``\\r`` or ``\\n`` (a ``\\r\\n`` may be split between two pieces); ``data:`` may be
    followed by one space or none; an event's ``data`` lines make one payload, joined by ``\\n``.
    Comments and the other fields (``event``, ``id``, ``retry``) are dropped: OpenAI's streams
    say everything in ``data``, and ``[DONE]`` is a payload like any other. ``verbatim`` keeps
    every line of each event (only line ends are made ``\n``): a relay of an API whose clients
    read the ``event`` field, such as Responses.
    """

    __slots__ = ("_after_cr", "_pending", "_verbatim")

    def __init__(self, verbatim: bool = False) -> None:
        self._pending = b""  # the start of an event whose blank line has not arrived, with \n line ends
        self._after_cr = False  # the last piece ended in \r: a \n starting the next one is that line's end
        self._verbatim = verbatim

    def feed(self, piece: bytes) -> bytes:
        if not piece:
            return b""
        if self._after_cr and piece.startswith(b"\n"):
            piece = piece[1:]
        self._after_cr = piece.endswith(b"\r")
        if _CR in piece:
            piece = _to_lf(piece)
        buf = self._pending + piece if self._pending else piece
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._pending = buf
            return b""
        end += 2
        self._pending = buf[end:]
        events = buf if end == len(buf) else buf[:end]
        # Most backends already write canonical events: those go on as they came, not copied.
        if self._verbatim or _canonical_payloads(events) is not None:
            return events
        return sse_events(_payloads(events))


# ``in`` finds a byte given as an int several times faster than one given as bytes.
_CR, _LF = ord("\r"), ord("\n")


def _to_lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def _canonical_payloads(text: bytes) -> list[bytes] | None:
    """The payloads of ``text`` (whole events, \\n line ends) if every event in it is one non-empty
    ``data: `` line, else None. A few calls into C where parsing would be a Python loop over the
    events: this runs on every block of every stream."""
    if not (text.startswith(b"data: ") and text.endswith(b"\n\n")):
        return None
    payloads = text[6:-2].split(b"\n\ndata: ")
    if _LF in b"".join(payloads) or not all(payloads):  # a line of another kind, or an empty event
        return None
    return payloads


def _payloads(text: bytes) -> list[bytes]:
    """The payloads of the events in ``text`` (\\n line ends; events apart by blank lines)."""
    payloads = _canonical_payloads(text)
    if payloads is not None:
        return payloads
    out = []
    for event in text.split(b"\n\n"):
        data = _event_data(event) if event else b""
        if data:  # an event without data is not dispatched (the SSE spec)
            out.append(data)
    return out


def _event_data(event: bytes) -> bytes:
    values = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            values.append(value[1:] if value.startswith(b" ") else value)
        elif line == b"data":  # a field name alone is that field with an empty value
            values.append(b"")
    return b"\n".join(values)


def first_choice(body: bytes) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A finished chat completion's parsed body, its first choice and that choice's message, for a front
    door that translates the answer; ``UpstreamError`` when the backend's answer has none."""
    try:
        completion = orjson.loads(body)
        choice = completion["choices"][0]
        message = choice["message"]
        if not isinstance(message, dict):
            raise TypeError
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        raise UpstreamError("The backend's answer had no message to translate.") from None
    return completion, choice, message


# ---- builders for backends that do not speak OpenAI natively (Ollama, local engines) ----------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _completion(
    kind: str, id: str, model: str, choices: list[dict[str, Any]], usage: Usage | None, created: int | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": id,
        "object": kind,
        "created": created or int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage.as_dict()
    return body


def chat_completion(
    *, id: str, model: str, choices: list[dict[str, Any]], usage: Usage | None, created: int | None = None
) -> dict[str, Any]:
    return _completion("chat.completion", id, model, choices, usage, created)


def chat_choice(index: int, content: str, finish_reason: str | None) -> dict[str, Any]:
    return {
        "index": index,
        "message": {"role": "assistant", "content": content},
        "logprobs": None,
        "finish_reason": finish_reason,
    }


def chat_chunk(
    *, id: str, model: str, created: int, delta: dict[str, Any] | None = None, index: int = 0,
    finish_reason: str | None = None, usage: Usage | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; with ``usage`` and no delta it is the final usage chunk."""
    chunk: dict[str, Any] = {"id": id, "object": "chat.completion.chunk", "created": created, "model": model}
    if delta is None:
        chunk["choices"] = []
    else:
        chunk["choices"] = [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    if usage is not None:
        chunk["usage"] = usage.as_dict()
    return chunk


def text_completion(
    *, id: str, model: str, choices: list[dict[str, Any]], usage: Usage | None, created: int | None = None
) -> dict[str, Any]:
    return _completion("text_completion", id, model, choices, usage, created)


def text_choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def text_chunk(
    *, id: str, model: str, created: int, text: str | None = None, index: int = 0,
    finish_reason: str | None = None, usage: Usage | None = None,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {"id": id, "object": "text_completion", "created": created, "model": model}
    chunk["choices"] = [] if text is None else [
        {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
    ]
    if usage is not None:
        chunk["usage"] = usage.as_dict()
    return chunk
