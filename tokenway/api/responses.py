"""OpenAI's Responses API: ``POST /v1/responses`` as a wire format over chat, and ``GET``/``DELETE
/v1/responses/{id}`` (and its ``input_items``) over the stored responses.

``POST`` runs the data plane like chat (keys, limits, budgets, cache, routing, retries, ledger):
``read`` validates the Responses body and builds a chat ``Call``; ``prepare`` puts the stored
conversation of ``previous_response_id`` (the caller's own) in front of the new input; the answer,
body or stream, goes back as a ``response`` object or Responses events, and, unless ``store`` is
false, is stored for the caller once it is sent. docs/responses.md has the mapping.

A model whose backends speak Responses (``responses: native``) gets a ``responses`` call instead:
the request goes through the same policies to the backend as it is, and its answer comes back as
the backend wrote it; the gateway still keeps it, so ``GET``, ``DELETE`` and ``previous_response_id``
stay the caller's own.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Query, Request

from tokenway.api.callers import Callers
from tokenway.api.calls import check_limits
from tokenway.config import Limits
from tokenway.context import RequestContext
from tokenway.errors import GatewayError, InvalidRequest, NotFound
from tokenway.ids import IdGenerator
from tokenway.protocol import parse_body
from tokenway.providers.base import Call
from tokenway.translate.responses_in import ResponseDraft, chat_body, input_items
from tokenway.translate.responses_out import NativeEvents, ResponsesStream, from_chat, listed_item
from tokenway.translate.responses_schema import NATIVE_RESPONSES_REQUEST, RESPONSES_REQUEST
from tokenway.translate.responses_store import ResponseStore

# The chat limits' fields, as the Responses request names them.
_PARAMS = {"messages": "input", "max_tokens": "max_output_tokens"}


@dataclass(slots=True)
class ResponsesCall(Call):
    """A chat ``Call`` that answers a Responses request: it carries the request to its answer."""

    draft: ResponseDraft | None = None


def owner_of(ctx: RequestContext) -> str:
    """Whose stored responses a call reads and writes: as ``Callers.identify`` names the caller."""
    if ctx.key is not None:
        return ctx.key.id
    return "master" if ctx.key_alias == "master" else "anonymous"


class ResponsesWire:
    """``POST /v1/responses`` (``wire.StatefulWire``): Responses in, chat through the policies, Responses out."""

    endpoint = "responses"

    def __init__(self, store: ResponseStore, limits: Limits, native: Collection[str] = ()) -> None:
        self._store = store
        self._limits = limits
        self._native = frozenset(native)  # models whose backends answer Responses themselves
        self._new_response_id = IdGenerator("resp_")
        self._new_message_id = IdGenerator("msg_")
        self._new_call_id = IdGenerator("fc_")
        self._new_output_id = IdGenerator("fco_")

    def read(self, body: bytes, limits: Limits) -> Call:
        if self._native and _model_of(body) in self._native:
            return self._read_native(body, limits)
        request = parse_body(RESPONSES_REQUEST, body, ("model",))
        items = input_items(request)
        draft = ResponseDraft(self._new_response_id(), request["model"], request, items)
        call = ResponsesCall("chat", chat_body(request, items), draft=draft)
        if request.get("previous_response_id") is None:
            _check(call, limits)  # else once the conversation is whole, in prepare
        return call

    def _read_native(self, body: bytes, limits: Limits) -> Call:
        """A ``responses`` call: the request as the client sent it, checked only where the gateway reads it."""
        request = parse_body(NATIVE_RESPONSES_REQUEST, body, ("model",))
        call = ResponsesCall("responses", request,
                             draft=ResponseDraft("", request["model"], request, input_items(request)))
        _check(call, limits)
        return call

    async def prepare(self, call: Call, ctx: RequestContext) -> None:
        draft = _draft(call)
        previous = draft.request.get("previous_response_id")
        if previous is None:
            return
        record = await self._store.get(owner_of(ctx), previous)
        if record is None:  # unknown, expired, deleted, or another key's: the same answer
            raise NotFound(f"Previous response with id '{previous}' not found.", param="previous_response_id")
        native = call.kind == "responses"
        if bool(record.get("native")) != native:
            # Each side keeps its own half of the state: a native backend the conversation, the gateway the
            # items it translates. A conversation stays with the kind of model it began on.
            began = "a model that answers Responses natively" if record.get("native") else "a translating model"
            raise InvalidRequest(f"Previous response '{previous}' was made by {began}; continue it on a model "
                                 "that answers the same way.", param="previous_response_id")
        draft.items = [*record["items"], *record["response"]["output"], *draft.items]
        if native:
            return  # the backend keeps the conversation: the request goes to it as it is
        call.body = chat_body(draft.request, draft.items)
        _check(call, self._limits)

    def completion(self, body: bytes, call: Call, ctx: RequestContext) -> bytes:
        draft = _draft(call)
        if call.kind == "responses":
            if draft.store:
                response = orjson.loads(body)
                ctx.defer(lambda ctx: self._keep(ctx, draft, response, native=True))
            return body
        response = from_chat(draft, body, self._new_message_id, self._new_call_id)
        if draft.store:
            ctx.defer(lambda ctx: self._keep(ctx, draft, response))
        return orjson.dumps(response)

    def stream(self, call: Call, ctx: RequestContext) -> ResponsesStream | NativeEvents:
        draft = _draft(call)
        if call.kind == "responses":
            events = NativeEvents()
            if draft.store:
                ctx.defer(lambda ctx: self._keep(ctx, draft, events.response, native=True))
            return events
        translation = ResponsesStream(draft, self._new_message_id, self._new_call_id)
        if draft.store:
            ctx.defer(lambda ctx: self._keep(ctx, draft, translation.response))
        return translation

    def error(self, error: GatewayError) -> tuple[int, bytes]:
        return error.status, error.envelope()

    async def _keep(
        self, ctx: RequestContext, draft: ResponseDraft, response: dict[str, Any] | None, native: bool = False
    ) -> None:
        """Store a response that was sent whole (after it was sent: the client does not wait for it), its
        conversation's items numbered so ``input_items`` can page through them. A native response is
        kept under the backend's id."""
        if response is None or ctx.status != 200:
            return
        response_id = response.get("id") if native else draft.id
        if not isinstance(response_id, str) or not response_id:
            return
        items = [item if item.get("id") else {**item, "id": self._item_id(item)} for item in draft.items]
        record = {"response": response, "items": items, **({"native": True} if native else {})}
        await self._store.put(owner_of(ctx), response_id, record)

    def _item_id(self, item: dict[str, Any]) -> str:
        kind = item.get("type")
        if kind == "function_call":
            return self._new_call_id()
        return self._new_output_id() if kind == "function_call_output" else self._new_message_id()


def _model_of(body: bytes) -> Any:
    """The request's ``model``, looked at before the body is validated (a broken body: None, and the
    validation that follows names what is wrong)."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return request.get("model") if isinstance(request, dict) else None


def _draft(call: Call) -> ResponseDraft:
    assert isinstance(call, ResponsesCall) and call.draft is not None, "the call was read by ResponsesWire"
    return call.draft


def _check(call: Call, limits: Limits) -> None:
    """The gateway's bounds on the chat call (messages, characters, tokens), named as Responses names them."""
    try:
        check_limits(call, limits)
    except InvalidRequest as error:
        error.param = _PARAMS.get(error.param or "", error.param)
        error.message = error.message.replace("'max_tokens'", "'max_output_tokens'")
        raise


def responses_router(store: ResponseStore, callers: Callers) -> APIRouter:
    """``GET`` and ``DELETE /v1/responses/{response_id}``: the caller's own stored responses."""
    router = APIRouter(tags=["openai"])

    def not_found(response_id: str) -> NotFound:
        return NotFound(f"Response with id '{response_id}' not found.", param="response_id")

    @router.get("/v1/responses/{response_id}", summary="Retrieve a stored response")
    async def get_response(response_id: str, request: Request) -> dict[str, Any]:
        owner, _ = callers.identify(request)
        record = await store.get(owner, response_id)
        if record is None:
            raise not_found(response_id)
        response: dict[str, Any] = record["response"]
        return response

    @router.get("/v1/responses/{response_id}/input_items", summary="List a stored response's input items")
    async def list_input_items(
        response_id: str, request: Request, after: str | None = None, before: str | None = None,
        limit: int = Query(20, ge=1, le=100), order: Literal["asc", "desc"] = "desc",
    ) -> dict[str, Any]:
        owner, _ = callers.identify(request)
        record = await store.get(owner, response_id)
        if record is None:
            raise not_found(response_id)
        items = [listed_item(item) for item in record["items"]]
        if order == "desc":
            items.reverse()
        ids = [item.get("id") for item in items]
        for name, cursor in (("after", after), ("before", before)):
            if cursor is not None and cursor not in ids:
                raise InvalidRequest(f"No input item with id '{cursor}' in response '{response_id}'.", param=name)
        start = ids.index(after) + 1 if after is not None else 0
        end = ids.index(before) if before is not None else len(items)
        page = items[start:end][:limit]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": end - start > limit}

    @router.delete("/v1/responses/{response_id}", summary="Delete a stored response")
    async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
        owner, _ = callers.identify(request)
        if not await store.delete(owner, response_id):
            raise not_found(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    return router


# ---- the OpenAPI document (/openapi.json; the fuzz test holds the gateway to it) -------------------

_REF = "#/components/schemas/{model}"
_EVENT_TYPES = [
    "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
    "response.output_text.delta", "response.output_text.done", "response.content_part.done",
    "response.output_item.done", "response.function_call_arguments.delta", "response.function_call_arguments.done",
    "response.completed", "response.incomplete", "response.failed", "error",
]
_USAGE = {"type": "object", "required": ["input_tokens", "output_tokens", "total_tokens"], "properties": {
    "input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}}
RESPONSE = {
    "type": "object", "title": "Response",
    "required": ["id", "object", "created_at", "status", "model", "output", "usage"],
    "properties": {
        "id": {"type": "string"}, "object": {"const": "response"}, "created_at": {"type": "integer"},
        "status": {"enum": ["completed", "incomplete", "failed", "in_progress"]}, "model": {"type": "string"},
        "output": {"type": "array", "items": {"type": "object", "required": ["id", "type"], "properties": {
            "id": {"type": "string"}, "type": {"enum": ["message", "function_call"]}}}},
        "usage": {"anyOf": [_USAGE, {"type": "null"}]},
        "previous_response_id": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
}
_DELETED = {"type": "object", "required": ["id", "object", "deleted"], "properties": {
    "id": {"type": "string"}, "object": {"const": "response"}, "deleted": {"const": True}}}
_STREAM = {"description": "Responses' server-sent events, each `event: <type>` with its JSON (a `sequence_number` "
                          "each): `response.created`, `response.in_progress`, per output item its `added`, deltas "
                          "and `done` events, then `response.completed` (or `response.incomplete`) with usage; "
                          "`error` and `response.failed` end a failed one.",
           "schema": {"type": "object", "required": ["event", "data"], "properties": {
               "event": {"enum": _EVENT_TYPES},
               "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": {
                   "type": "object", "required": ["type", "sequence_number"], "properties": {
                       "type": {"enum": _EVENT_TYPES}, "sequence_number": {"type": "integer"}}}}}}}


def document(paths: dict[str, Any], components: dict[str, Any], errors: dict[str, dict[str, Any]]) -> None:
    """Put ``POST /v1/responses`` into ``paths`` (its schemas into ``components``; ``errors``: the data
    plane's error answers by status), give the ``GET``/``DELETE`` routes their answers' schemas, and
    link a created response to them."""
    body = RESPONSES_REQUEST.json_schema(ref_template=_REF.format(model="Responses{model}"))
    components.update({f"Responses{name}": schema for name, schema in body.pop("$defs", {}).items()})
    components.update({"ResponsesRequest": {**body, "title": "ResponsesRequest"}, "Response": RESPONSE})
    answer = {"application/json": {"schema": {"$ref": _REF.format(model="Response")}}, "text/event-stream": _STREAM}
    post: dict[str, Any] = {
        "tags": ["openai"], "summary": "Create a response (OpenAI's Responses API)", "operationId": "createResponse",
        "description": "OpenAI-compatible; translated to chat completions for every backend. `stream: true` answers "
                       "with Responses' server-sent events. docs/responses.md.",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": _REF.format(model="ResponsesRequest")},
            "example": {"model": "gpt-4o-mini", "input": "Say hello."}}}},
        "responses": {"200": {"description": "The response (JSON), or its events when `stream` is true.",
                              "content": answer}, **errors},
    }
    paths["/v1/responses"] = {"post": post}
    stored = paths.get("/v1/responses/{response_id}", {})
    links = {}
    for method, schema in (("get", {"$ref": _REF.format(model="Response")}), ("delete", _DELETED)):
        operation = stored.get(method)
        if operation is not None:
            operation["responses"]["200"]["content"] = {"application/json": {"schema": schema}}
            links[f"{method.capitalize()}Response"] = {"operationId": operation["operationId"],
                                                       "parameters": {"response_id": "$response.body#/id"}}
    post["responses"]["200"]["links"] = links
