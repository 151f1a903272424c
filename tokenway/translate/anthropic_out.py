"""OpenAI chat answers as Anthropic's Messages answers: the JSON body, the SSE events, the errors.

A stream is translated chunk by chunk as it arrives (``MessageEvents.feed``), never buffered: text
deltas become ``text_delta`` events, a tool call's argument pieces become ``input_json_delta``
events of its ``tool_use`` block, passed on unchanged, so a client joining them gets exactly the
arguments the backend wrote, however many chunks they came in. A block opens when its first piece
arrives and closes when another kind of piece (or the end) comes, so the indexes count up from 0 in
the order the client sees the blocks.
"""

from __future__ import annotations

from typing import Any

import orjson

from tokenway.errors import GatewayError, UpstreamError, UpstreamRejected
from tokenway.protocol import first_choice, is_done, iter_sse_data

# Anthropic's error type for each status; any other 4xx is an invalid request, any other 5xx api_error.
_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 503: "overloaded_error",
    529: "overloaded_error",
}
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                 "content_filter": "refusal"}


def error_type(status: int) -> str:
    """Anthropic's ``error.type`` for an HTTP status."""
    return _ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")


def error_message(error: GatewayError) -> str:
    """The error's message, naming the field (Anthropic's envelope has no ``param``) and, for a backend's
    own refusal, what the backend said."""
    message = error.message
    if isinstance(error, UpstreamRejected) and error.body:
        try:
            said = orjson.loads(error.body)["error"]["message"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            said = None
        if isinstance(said, str) and said:
            message = f"{message} The backend said: {said}"
    if error.param and error.param not in message:
        message = f"{message} (field: '{error.param}')"
    return message


def error_body(error: GatewayError) -> tuple[int, bytes]:
    """The status and Anthropic envelope of an error answer."""
    body = {"type": "error", "error": {"type": error_type(error.status), "message": error_message(error)}}
    return error.status, orjson.dumps(body)


def message_body(chat: bytes, message_id: str, model: str, stop_sequences: list[str] | None) -> bytes:
    """A finished chat completion (JSON bytes) as an Anthropic ``message``."""
    completion, choice, said = first_choice(chat)
    content: list[dict[str, Any]] = []
    text = said.get("content")
    if text:
        content.append({"type": "text", "text": text})
    for i, call in enumerate(said.get("tool_calls") or ()):
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or f"toolu_{message_id[4:]}_{i}",
                        "name": function.get("name") or "", "input": _tool_input(function.get("arguments"))})
    if not content:
        content.append({"type": "text", "text": ""})
    reason, sequence = stop_reason(choice, stop_sequences)
    return orjson.dumps({
        "id": message_id, "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": reason, "stop_sequence": sequence, "usage": usage(completion.get("usage")),
    })


def _tool_input(arguments: Any) -> dict[str, Any]:
    if arguments is None or arguments == "":  # a tool without parameters, called with none
        return {}
    try:
        value = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise UpstreamError("The backend called a tool with arguments that are not a JSON object; a tool_use "
                            "block's input must be one. Retry, or use a model that writes valid tool calls.")
    return value


def stop_reason(choice: dict[str, Any], stop_sequences: list[str] | None) -> tuple[str, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` for a chat choice. Chat says ``stop`` for a
    natural end and a stop sequence alike; vLLM (``stop_reason``) and SGLang (``matched_stop``) name
    the sequence that matched, and then it is ``stop_sequence``."""
    finish = choice.get("finish_reason")
    if finish == "stop" and stop_sequences:
        matched = choice.get("stop_reason", choice.get("matched_stop"))
        if isinstance(matched, str) and matched in stop_sequences:
            return "stop_sequence", matched
    return _STOP_REASONS.get(finish or "stop", "end_turn"), None


def usage(raw: Any) -> dict[str, int]:
    """Anthropic's usage from chat's: input tokens exclude the cached ones, which Anthropic counts apart."""
    if not isinstance(raw, dict):
        return {"input_tokens": 0, "output_tokens": 0}
    details = raw.get("prompt_tokens_details")
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    out = {"input_tokens": int(raw.get("prompt_tokens") or 0) - cached,
           "output_tokens": int(raw.get("completion_tokens") or 0)}
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


def event(name: bytes, payload: dict[str, Any]) -> bytes:
    """One Anthropic SSE event: its name and its JSON data."""
    return b"event: " + name + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def error_event(error: GatewayError) -> bytes:
    """The ``error`` event that ends a stream which has started."""
    return event(b"error", orjson.loads(error_body(error)[1]))


def _payloads(block: bytes) -> list[bytes]:
    """The payloads of a block of canonical events. Most blocks are one event (a relay hands chunks on
    one at a time): its payload is taken without a scan of the block."""
    if block.startswith(b"data: {") and block.endswith(b"\n\n") and block.count(b"\n") == 2:
        return [block[6:-2]]
    return iter_sse_data(block)


_PING = event(b"ping", {"type": "ping"})
_STOP = event(b"message_stop", {"type": "message_stop"})


class MessageEvents:
    """One stream's translation: canonical OpenAI chat SSE blocks in, Anthropic's events out."""

    __slots__ = ("_block", "_delta", "_ended", "_finish", "_id", "_model", "_open_now", "_pieces", "_started",
                 "_stop_sequences", "_tool", "_tools_seen", "_usage")

    def __init__(self, message_id: str, model: str, stop_sequences: list[str] | None) -> None:
        self._id, self._model, self._stop_sequences = message_id, model, stop_sequences
        self._started = self._ended = False
        self._block = -1  # the index of the last block opened (-1: none yet)
        self._open_now = False  # whether that block is still open
        self._tool: int | None = None  # the chat index of the tool call whose block is open
        self._tools_seen: set[int] = set()
        self._finish: dict[str, Any] = {}  # the choice that carried finish_reason
        self._usage: Any = None
        self._pieces = 0  # chunks with generated text: output tokens when the backend reports no usage
        # The open block's content_block_delta event up to its string: a delta per chunk of every stream,
        # so its fixed bytes are made once per block, as ``event`` would write them.
        self._delta = b""

    def feed(self, block: bytes) -> bytes:
        """Anthropic's events for one block of the internal stream; ``data: [DONE]`` closes the message."""
        if self._ended:
            return b""
        out: list[bytes] = []
        if not self._started:
            self._started = True
            out.append(self._start())
        for data in _payloads(block):
            if is_done(data):
                out.append(self._close())
                break
            chunk = orjson.loads(data)
            choices = chunk.get("choices")
            if choices:  # one, at index 0: a Messages request cannot ask for n > 1
                self._choice(choices[0], out)
            elif "error" in chunk:  # a backend's error event, relayed
                out.append(self._relayed_error(chunk["error"]))
                break
            if chunk.get("usage"):
                self._usage = chunk["usage"]
        return out[0] if len(out) == 1 else b"".join(out)

    def error(self, error: GatewayError) -> bytes:
        """The error event that ends the stream (after message_start, as Anthropic sends one)."""
        if self._ended:
            return b""
        self._ended = True
        return (b"" if self._started else self._start()) + error_event(error)

    def _start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self._id, "type": "message", "role": "assistant", "model": self._model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        return event(b"message_start", {"type": "message_start", "message": message}) + _PING

    def _choice(self, choice: dict[str, Any], out: list[bytes]) -> None:
        delta = choice.get("delta")
        if delta:
            text = delta.get("content")
            if text:
                self._pieces += 1
                if not self._open_now or self._tool is not None:
                    self._open({"type": "text", "text": ""}, None, out)
                out.append(self._delta + orjson.dumps(text) + b"}}\n\n")
            calls = delta.get("tool_calls")
            if calls:
                for call in calls:
                    self._tool_piece(call, out)
        if choice.get("finish_reason"):
            self._finish = choice

    def _tool_piece(self, call: dict[str, Any], out: list[bytes]) -> None:
        index = call.get("index")
        if index is None:  # a backend that numbers no calls: a new id is a new call
            index = (max(self._tools_seen, default=-1) + 1) if call.get("id") or self._tool is None else self._tool
        function = call.get("function") or {}
        if index != self._tool:
            if index in self._tools_seen:
                # Anthropic's blocks follow one another; a piece for a call whose block is closed cannot be sent.
                raise UpstreamError("The backend interleaved the arguments of several tool calls in its stream; "
                                    "they cannot be sent as Anthropic tool_use blocks. Retry without streaming.")
            block: dict[str, Any] = {"type": "tool_use", "id": call.get("id") or f"toolu_{self._id[4:]}_{index}",
                     "name": function.get("name") or "", "input": {}}
            self._open(block, index, out)
        arguments = function.get("arguments")
        if arguments:
            self._pieces += 1
            out.append(self._delta + orjson.dumps(arguments) + b"}}\n\n")

    def _open(self, block: dict[str, Any], tool: int | None, out: list[bytes]) -> None:
        self._close_block(out)
        self._block += 1
        self._open_now = True
        self._tool = tool
        kind = b'"text_delta","text":' if tool is None else b'"input_json_delta","partial_json":'
        self._delta = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
                       + str(self._block).encode() + b',"delta":{"type":' + kind)
        if tool is not None:
            self._tools_seen.add(tool)
        out.append(event(b"content_block_start", {"type": "content_block_start", "index": self._block,
                                                  "content_block": block}))

    def _close_block(self, out: list[bytes]) -> None:
        if self._open_now:
            self._open_now = False
            out.append(event(b"content_block_stop", {"type": "content_block_stop", "index": self._block}))

    def _close(self) -> bytes:
        self._ended = True
        out: list[bytes] = []
        self._close_block(out)
        reason, sequence = stop_reason(self._finish, self._stop_sequences)
        counts = usage(self._usage) if self._usage else {"output_tokens": self._pieces}
        out.append(event(b"message_delta", {"type": "message_delta",
                                            "delta": {"stop_reason": reason, "stop_sequence": sequence},
                                            "usage": counts}))
        out.append(_STOP)
        return b"".join(out)

    def _relayed_error(self, raw: Any) -> bytes:
        self._ended = True
        kind = raw.get("type") if isinstance(raw, dict) else None
        message = raw.get("message") if isinstance(raw, dict) else None
        body = {"type": "error", "error": {"type": "rate_limit_error" if kind == "rate_limit_error" else "api_error",
                                           "message": message if isinstance(message, str) else "The backend failed."}}
        return event(b"error", body)
