"""Anthropic's Messages API: ``POST /v1/messages`` as a wire format, and ``/v1/messages/count_tokens``.

``/v1/messages`` runs the data plane's steps like every endpoint (key, limits, budget, cache,
routing, retries, ledger, metrics, log): ``MessagesWire`` reads an Anthropic body into a chat
``Call`` and turns the chat answer, body or stream, back into Anthropic's (``tokenway/translate``).
``count_tokens`` calls no backend: it answers the gateway's own estimate, after the same key check.
docs/anthropic.md says what is translated how.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from tokenway.api.calls import check_limits
from tokenway.api.openai import request_context
from tokenway.api.wire import StreamTranslation
from tokenway.asgi import ClientDisconnected, Receive, Scope, Send, read_body, send_bytes, server_hooks
from tokenway.config import Limits
from tokenway.context import RequestContext
from tokenway.errors import GatewayError, InternalError, ModelNotFound
from tokenway.ids import IdGenerator
from tokenway.observability.logging import JsonLog
from tokenway.protocol import parse_body
from tokenway.providers.base import Call
from tokenway.translate.anthropic_in import COUNT_TOKENS_REQUEST, MESSAGES_REQUEST, chat_body, chat_messages
from tokenway.translate.anthropic_out import MessageEvents, error_body, message_body
from tokenway.usage.cost import prompt_size, tokens_for_chars


class MessagesWire:
    """``/v1/messages``: Anthropic's request in, a chat ``Call`` to the policy list, Anthropic's answer out."""

    def __init__(self) -> None:
        self._new_id = IdGenerator("msg_")

    @property
    def endpoint(self) -> str:
        return "messages"

    def read(self, body: bytes, limits: Limits) -> Call:
        call = Call("chat", chat_body(parse_body(MESSAGES_REQUEST, body, ())))
        check_limits(call, limits)
        return call

    def completion(self, body: bytes, call: Call, ctx: RequestContext) -> bytes:
        return message_body(body, self._new_id(), call.body["model"], call.body.get("stop"))

    def stream(self, call: Call, ctx: RequestContext) -> StreamTranslation:
        return MessageEvents(self._new_id(), call.body["model"], call.body.get("stop"))

    def error(self, error: GatewayError) -> tuple[int, bytes]:
        return error_body(error)


def count_tokens(request: dict[str, Any]) -> int:
    """The gateway's estimate of a request's input tokens (``usage.cost``: a token per 4 characters plus
    framing per message), over its text as a chat backend gets it, tool calls and tool definitions included."""
    messages = chat_messages(request)
    chars, count = prompt_size(Call("chat", {"messages": messages}))
    for message in messages:
        for call in message.get("tool_calls") or ():
            chars += len(call["function"]["name"]) + len(call["function"]["arguments"])
    for tool in request.get("tools") or ():
        chars += len(orjson.dumps(tool))
    return tokens_for_chars(chars, count)


Authenticate = Callable[[RequestContext, "str | None"], object]


class CountTokens:
    """``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``, the key checked as for ``/v1/messages``
    (401 without a valid one, 403 for a model it may not use), errors in Anthropic's envelope, a log line."""

    def __init__(self, authenticate: Authenticate, models: Callable[[], list[str]], limits: Limits,
                 log: JsonLog) -> None:
        self._authenticate = authenticate
        self._models = models
        self._limits = limits
        self._log = log
        self._new_request_id = IdGenerator("req_")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx, length = request_context(scope, "count_tokens", self._new_request_id)
        headers = [(b"x-request-id", ctx.request_id.encode())]
        try:
            body = await read_body(receive, self._limits.max_body_bytes, length, server_hooks(scope))
            self._authenticate(ctx, None)  # a caller without a valid key: 401 whatever it sent
            request = parse_body(COUNT_TOKENS_REQUEST, body, ())
            ctx.model = request["model"]
            if ctx.model not in self._models():
                raise ModelNotFound(f"The model '{ctx.model}' does not exist on this gateway.", param="model")
            self._authenticate(ctx, ctx.model)
            await send_bytes(send, 200, orjson.dumps({"input_tokens": count_tokens(request)}), headers)
        except ClientDisconnected:
            ctx.status, ctx.error_type = 499, "ClientDisconnected"
        except GatewayError as error:
            ctx.status, ctx.error_type = error.status, type(error).__name__
            status, answer = error_body(error)
            await send_bytes(send, status, answer, [*headers, *error.headers()])
        except Exception as exc:  # a bug: the envelope to the client, the traceback to the log
            ctx.status, ctx.error_type, ctx.exception = 500, type(exc).__name__, exc
            status, answer = error_body(InternalError(f"Internal error; request id {ctx.request_id}."))
            await send_bytes(send, status, answer, headers)
        finally:
            self._log.request(ctx, time.perf_counter())


# ---- the two operations in /openapi.json (api/openapi.py adds them) ------------------------------

_REF = "#/components/schemas/{model}"
_ERROR = {"type": "object", "title": "AnthropicError", "required": ["type", "error"], "properties": {
    "type": {"const": "error"}, "error": {"type": "object", "required": ["type", "message"], "properties": {
        "type": {"type": "string"}, "message": {"type": "string"}}}}}
_USAGE = {"type": "object", "required": ["input_tokens", "output_tokens"], "properties": {
    "input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"},
    "cache_read_input_tokens": {"type": "integer"}}}
_MESSAGE = {"type": "object", "title": "AnthropicReply", "required": [
    "id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"], "properties": {
    "id": {"type": "string", "pattern": "^msg_"}, "type": {"const": "message"}, "role": {"const": "assistant"},
    "model": {"type": "string"}, "content": {"type": "array", "items": {"anyOf": [
        {"type": "object", "required": ["type", "text"], "properties": {
            "type": {"const": "text"}, "text": {"type": "string"}}},
        {"type": "object", "required": ["type", "id", "name", "input"], "properties": {
            "type": {"const": "tool_use"}, "id": {"type": "string"}, "name": {"type": "string"},
            "input": {"type": "object"}}}]}},
    "stop_reason": {"anyOf": [{"enum": ["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]},
                              {"type": "null"}]},
    "stop_sequence": {"anyOf": [{"type": "string"}, {"type": "null"}]}, "usage": _USAGE}}
_EVENT_TYPES = ["message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
                "message_stop", "ping", "error"]
_EVENTS = {"description": "Anthropic's server-sent events: `message_start`, `ping`, then per content block "
                          "`content_block_start`, `content_block_delta` (`text_delta`, `input_json_delta`), "
                          "`content_block_stop`, then `message_delta` and `message_stop`; `error` ends a failed one.",
           "schema": {"type": "object", "required": ["event", "data"], "properties": {
               "event": {"enum": _EVENT_TYPES},
               "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": {
                   "type": "object", "required": ["type"], "properties": {"type": {"enum": _EVENT_TYPES}}}}}}}
_ERRORS = {
    "400": "Invalid request (invalid_request_error; the message names the field).",
    "401": "Missing or wrong API key (authentication_error).", "403": "The key may not use this model.",
    "404": "Unknown model (not_found_error).", "408": "The body did not arrive in time.",
    "413": "Body over the size limit (request_too_large).", "429": "Rate limited or over budget (rate_limit_error).",
    "502": "The backend failed (api_error).", "503": "No capacity, starting or draining (overloaded_error).",
    "504": "The backend timed out (api_error).",
}
_COUNTED = {"type": "object", "title": "AnthropicTokenCount", "required": ["input_tokens"],
            "properties": {"input_tokens": {"type": "integer", "minimum": 0}}}


def openapi_paths(components: dict[str, Any]) -> dict[str, Any]:
    """``/v1/messages`` and ``/v1/messages/count_tokens`` as OpenAPI operations; their schemas go into
    ``components``."""
    components.update({"AnthropicError": _ERROR, "AnthropicReply": _MESSAGE, "AnthropicTokenCount": _COUNTED})
    example = {"model": "claude-model", "max_tokens": 64, "messages": [{"role": "user", "content": "Say hello."}]}
    messages = _operation(MESSAGES_REQUEST, "AnthropicMessagesRequest", components, example, {
        "application/json": {"schema": {"$ref": _REF.format(model="AnthropicReply")}}, "text/event-stream": _EVENTS})
    messages.update(summary="Create a message (Anthropic's Messages API)", operationId="createMessage",
                    description="Anthropic-compatible; translated to chat for every backend. `stream: true` "
                                "answers with Anthropic's server-sent events. docs/anthropic.md.")
    counted = _operation(COUNT_TOKENS_REQUEST, "AnthropicCountTokensRequest", components,
                         {k: v for k, v in example.items() if k != "max_tokens"},
                         {"application/json": {"schema": {"$ref": _REF.format(model="AnthropicTokenCount")}}})
    counted.update(summary="Count a message's input tokens (Anthropic's)", operationId="countMessageTokens",
                   description="The gateway's estimate; no backend is called.")
    counted["responses"] = {code: answer for code, answer in counted["responses"].items()
                            if code not in ("429", "502", "503", "504")}
    return {"/v1/messages": {"post": messages}, "/v1/messages/count_tokens": {"post": counted}}


def _operation(adapter: Any, name: str, components: dict[str, Any], example: dict[str, Any],
               answer: dict[str, Any]) -> dict[str, Any]:
    # Prefixed: the chat schemas have their own ToolDefinition, Metadata, ToolChoice...
    body = adapter.json_schema(ref_template=_REF.format(model="Anthropic{model}"))
    components.update({f"Anthropic{def_name}": schema for def_name, schema in body.pop("$defs", {}).items()})
    components[name] = {**body, "title": name}
    error = {"application/json": {"schema": {"$ref": _REF.format(model="AnthropicError")}}}
    return {"tags": ["anthropic"], "requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": _REF.format(model=name)}, "example": example}}},
        "responses": {"200": {"description": "The answer.", "content": answer},
                      **{code: {"description": text, "content": error} for code, text in _ERRORS.items()}}}
