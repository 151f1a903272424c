"""A chat completion out, a Responses answer back: the ``response`` object, or its SSE events.

A chat answer's message becomes a ``message`` output item (its text one ``output_text`` part) and
each tool call a ``function_call`` item; usage becomes ``input_tokens``/``output_tokens``. A chat
stream becomes Responses' events, each ``event: <type>`` with its JSON (numbered by
``sequence_number``): ``response.created``/``in_progress``, then per item ``output_item.added``,
its deltas, its ``.done`` events and ``output_item.done``, and ``response.completed`` (or
``response.incomplete``) with the whole response and usage once the chat stream's ``[DONE]`` comes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from tokenway.errors import GatewayError
from tokenway.protocol import Usage, first_choice, is_done, iter_sse_data, response_end
from tokenway.translate.responses_in import ECHOED, ResponseDraft

NewId = Callable[[], str]

# A chat finish reason that cut the answer short, as Responses' incomplete_details.reason.
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def response_object(
    draft: ResponseDraft, output: list[dict[str, Any]], usage: Usage | None, finish: str | None,
    status: str | None = None, error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``response`` object: what was asked (echoed), what came out, and its usage."""
    request = draft.request
    reason = _INCOMPLETE.get(finish or "")
    if status is None:
        status = "incomplete" if reason else "completed"
    body: dict[str, Any] = {
        "id": draft.id, "object": "response", "created_at": draft.created_at, "status": status,
        "error": error, "incomplete_details": {"reason": reason} if reason and status == "incomplete" else None,
        "model": draft.model, "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls") is not False,
        "tool_choice": request.get("tool_choice") or "auto", "tools": request.get("tools") or [],
        "text": request.get("text") or {"format": {"type": "text"}},
        "store": draft.store, "usage": response_usage(usage) if usage is not None else None,
    }
    for name in ECHOED:
        body[name] = request.get(name)
    if body["metadata"] is None:
        body["metadata"] = {}
    return body


def response_usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [output_text(text)] if status == "completed" else []}


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


def from_chat(draft: ResponseDraft, body: bytes, new_message_id: NewId, new_call_id: NewId) -> dict[str, Any]:
    """The ``response`` object for a finished chat completion body."""
    chat, choice, message = first_choice(body)
    output: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, str) and text:
        output.append(message_item(new_message_id(), text))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        output.append({**message_item(new_message_id(), ""), "content": [{"type": "refusal", "refusal": refusal}]})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        output.append(call_item(new_call_id(), str(call.get("id") or new_call_id()), str(function.get("name") or ""),
                                str(function.get("arguments") or "")))
    return response_object(draft, output, Usage.from_openai(chat.get("usage")), choice.get("finish_reason"))


def listed_item(item: dict[str, Any]) -> dict[str, Any]:
    """A stored conversation item as ``GET /v1/responses/{id}/input_items`` lists it: in the full form
    of Responses' items (a message's text as content parts, a status), whatever form the caller sent.
    Item types the gateway does not translate (a native backend's) are listed as they were kept."""
    kind = item.get("type")
    if kind in ("function_call", "function_call_output"):
        return {"status": "completed", **item}
    if kind != "message":
        return item
    content = item.get("content")
    if isinstance(content, str):
        text = output_text(content) if item.get("role") == "assistant" else {"type": "input_text", "text": content}
        content = [text]
    return {"status": "completed", **item, "content": content}


class _Call:
    """A function call item being streamed."""

    __slots__ = ("arguments", "call_id", "id", "name", "output_index")

    def __init__(self, item_id: str, call_id: str, name: str, output_index: int) -> None:
        self.id, self.call_id, self.name, self.output_index = item_id, call_id, name, output_index
        self.arguments: list[str] = []


class ResponsesStream:
    """One chat stream's translation into Responses events (``wire.StreamTranslation``).

    ``feed`` takes each block of canonical chat chunks and returns the events it makes;
    the block with ``[DONE]`` closes every open item and ends with ``response.completed``.
    ``response`` is the finished object once the stream has ended well (for the store).
    """

    def __init__(self, draft: ResponseDraft, new_message_id: NewId, new_call_id: NewId) -> None:
        self._draft = draft
        self._new_message_id, self._new_call_id = new_message_id, new_call_id
        self._sequence = 0
        self._started = False
        self._output: list[dict[str, Any]] = []  # finished items
        self._text: list[str] | None = None  # the open message item's text so far
        self._text_id = ""
        self._text_index = 0
        self._delta_head = b""  # the open message item's text delta event, up to its delta
        self._ended = False  # response.completed, .incomplete or .failed is out: nothing follows it
        self._calls: dict[int, _Call] = {}  # open function calls by their chat tool call index
        self._finish: str | None = None
        self._usage: Usage | None = None
        self.response: dict[str, Any] | None = None

    def feed(self, block: bytes) -> bytes:
        # Most blocks are one canonical event (``data: {...}\n\n``): its payload without a scan.
        if block.startswith(b"data: {") and block.find(b"\n") == len(block) - 2:
            payloads = [block[6:-2]]
        else:
            payloads = iter_sse_data(block)
        if not payloads:
            return block  # a heartbeat comment: it keeps the client's connection alive just the same
        out: list[bytes] = []
        if not self._started:
            self._start(out)
        choose = self._choice
        for payload in payloads:
            if self._ended:
                break
            if is_done(payload):
                self._close_items(out)
                self.response = response_object(self._draft, self._output, self._usage, self._finish)
                ending = "response.incomplete" if self.response["status"] == "incomplete" else "response.completed"
                self._event(out, ending, {"response": self.response})
                self._ended = True
                continue
            chunk = orjson.loads(payload)
            if "error" in chunk:  # a provider's own error event: the stream ends with it
                error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
                self._fail(out, error)
                continue
            if chunk.get("usage"):
                self._usage = Usage.from_openai(chunk["usage"])
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) == 0:
                    choose(out, choice)
        return out[0] if len(out) == 1 else b"".join(out)

    def error(self, error: GatewayError) -> bytes:
        if self._ended:
            return b""
        out: list[bytes] = []
        if not self._started:
            self._start(out)
        self._fail(out, {"message": error.message, "type": error.type, "param": error.param, "code": error.code})
        return b"".join(out)

    # ---- the events ----

    def _event(self, out: list[bytes], kind: str, fields: dict[str, Any]) -> None:
        fields["type"] = kind
        fields["sequence_number"] = self._sequence
        self._sequence += 1
        out.append(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(fields) + b"\n\n")

    def _start(self, out: list[bytes]) -> None:
        self._started = True
        snapshot = response_object(self._draft, [], None, None, status="in_progress")
        self._event(out, "response.created", {"response": snapshot})
        self._event(out, "response.in_progress", {"response": snapshot})

    def _fail(self, out: list[bytes], error: dict[str, Any]) -> None:
        self._event(out, "error", {"code": error.get("code"), "message": error.get("message") or "The stream failed.",
                                   "param": error.get("param")})
        # The response's own error takes only OpenAI's codes: a rate limit, or a server error for the rest.
        code = "rate_limit_exceeded" if error.get("code") == "rate_limit_exceeded" else "server_error"
        failed = {"code": code, "message": error.get("message") or "The stream failed."}
        snapshot = response_object(self._draft, self._output, self._usage, None, status="failed", error=failed)
        self._event(out, "response.failed", {"response": snapshot})
        self._ended = True

    def _choice(self, out: list[bytes], choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        text = delta.get("content")
        if text:
            if self._text is None:
                self._open_text(out)
            assert self._text is not None
            self._text.append(text)
            # The most frequent event, written from a template: a third of the cost of dumping a dict.
            out.append(b"%s%s,\"sequence_number\":%d}\n\n" % (self._delta_head, orjson.dumps(text), self._sequence))
            self._sequence += 1
        for call in delta.get("tool_calls") or ():
            self._call_delta(out, call)
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]

    def _open_text(self, out: list[bytes]) -> None:
        self._close_calls(out)
        self._text, self._text_id = [], self._new_message_id()
        self._text_index = len(self._output)
        self._event(out, "response.output_item.added", {
            "output_index": self._text_index, "item": message_item(self._text_id, "", "in_progress")})
        self._event(out, "response.content_part.added", {
            "item_id": self._text_id, "output_index": self._text_index, "content_index": 0, "part": output_text("")})
        self._delta_head = (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                            b'"item_id":"%s","output_index":%d,"content_index":0,"logprobs":[],"delta":'
                            % (self._text_id.encode(), self._text_index))

    def _close_text(self, out: list[bytes]) -> None:
        if self._text is None:
            return
        text, item_id, index = "".join(self._text), self._text_id, self._text_index
        self._text = None
        self._event(out, "response.output_text.done", {
            "item_id": item_id, "output_index": index, "content_index": 0, "text": text, "logprobs": []})
        self._event(out, "response.content_part.done", {
            "item_id": item_id, "output_index": index, "content_index": 0, "part": output_text(text)})
        item = message_item(item_id, text)
        self._output.append(item)
        self._event(out, "response.output_item.done", {"output_index": index, "item": item})

    def _call_delta(self, out: list[bytes], delta: dict[str, Any]) -> None:
        index = delta.get("index", 0)
        function = delta.get("function") or {}
        call = self._calls.get(index)
        if call is None:
            self._close_text(out)
            self._close_calls(out)  # one call at a time: a new index means the last one is whole
            call = _Call(self._new_call_id(), str(delta.get("id") or self._new_call_id()),
                         str(function.get("name") or ""), len(self._output))
            self._calls[index] = call
            self._event(out, "response.output_item.added", {
                "output_index": call.output_index,
                "item": call_item(call.id, call.call_id, call.name, "", "in_progress")})
        arguments = function.get("arguments")
        if arguments:
            call.arguments.append(arguments)
            self._event(out, "response.function_call_arguments.delta", {
                "item_id": call.id, "output_index": call.output_index, "delta": arguments})

    def _close_calls(self, out: list[bytes]) -> None:
        for call in self._calls.values():
            arguments = "".join(call.arguments)
            self._event(out, "response.function_call_arguments.done", {
                "item_id": call.id, "output_index": call.output_index, "name": call.name, "arguments": arguments})
            item = call_item(call.id, call.call_id, call.name, arguments)
            self._output.append(item)
            self._event(out, "response.output_item.done", {"output_index": call.output_index, "item": item})
        self._calls.clear()

    def _close_items(self, out: list[bytes]) -> None:
        self._close_text(out)
        self._close_calls(out)


class NativeEvents:
    """A Responses stream relayed from a backend that speaks it (``wire.StreamTranslation``): its
    events go to the client as they came; the gateway only keeps the finished ``response`` (for the
    store) and, when the stream fails under it, ends it with Responses' own ``error`` event."""

    __slots__ = ("_ended", "_sequence", "response")

    def __init__(self) -> None:
        self._sequence = 0  # events relayed so far: the backend numbers its events 0, 1, 2 ...
        self._ended = False
        self.response: dict[str, Any] | None = None

    def feed(self, block: bytes) -> bytes:
        self._sequence += block.count(b"\n\n")
        end = None if self._ended else response_end(block)
        if end is not None:
            self._ended = True
            if end.get("type") in ("response.completed", "response.incomplete"):
                response = end.get("response")
                self.response = response if isinstance(response, dict) else None
        return block

    def error(self, error: GatewayError) -> bytes:
        if self._ended:
            return b""
        self._ended = True
        event = {"type": "error", "code": error.code, "message": error.message, "param": error.param,
                 "sequence_number": self._sequence}
        return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"
