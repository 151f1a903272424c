"""OpenAI's Responses API: ``POST /v1/responses`` as a wire format over chat, and ``GET``/``DELETE
/v1/responses/{id}`` over the stored responses.

``POST`` runs the data plane like chat (keys, limits, budgets, cache, routing, retries, ledger):
``read`` validates the Responses body and builds a chat ``Call``; ``prepare`` puts the stored
conversation of ``previous_response_id`` (the caller's own) in front of the new input; the answer,
body or stream, goes back as a ``response`` object or Responses events, and, unless ``store`` is
false, is stored for the caller once it is sent. docs/responses.md has the mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request

from tokenway.api.callers import Callers
from tokenway.api.calls import check_limits
from tokenway.config import Limits
from tokenway.context import RequestContext
from tokenway.errors import GatewayError, InvalidRequest, NotFound
from tokenway.ids import IdGenerator
from tokenway.protocol import parse_body
from tokenway.providers.base import Call
from tokenway.translate.responses_in import ResponseDraft, chat_body, input_items
from tokenway.translate.responses_out import ResponsesStream, from_chat
from tokenway.translate.responses_schema import RESPONSES_REQUEST
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

    def __init__(self, store: ResponseStore, limits: Limits) -> None:
        self._store = store
        self._limits = limits
        self._new_response_id = IdGenerator("resp_")
        self._new_message_id = IdGenerator("msg_")
        self._new_call_id = IdGenerator("fc_")

    def read(self, body: bytes, limits: Limits) -> Call:
        request = parse_body(RESPONSES_REQUEST, body, ("model", "input"))
        items = input_items(request)
        draft = ResponseDraft(self._new_response_id(), request["model"], request, items)
        call = ResponsesCall("chat", chat_body(request, items), draft=draft)
        if request.get("previous_response_id") is None:
            _check(call, limits)  # else once the conversation is whole, in prepare
        return call

    async def prepare(self, call: Call, ctx: RequestContext) -> None:
        draft = _draft(call)
        previous = draft.request.get("previous_response_id")
        if previous is None:
            return
        record = await self._store.get(owner_of(ctx), previous)
        if record is None:  # unknown, expired, deleted, or another key's: the same answer
            raise NotFound(f"Previous response with id '{previous}' not found.", param="previous_response_id")
        draft.items = [*record["items"], *record["response"]["output"], *draft.items]
        call.body = chat_body(draft.request, draft.items)
        _check(call, self._limits)

    def completion(self, body: bytes, call: Call, ctx: RequestContext) -> bytes:
        draft = _draft(call)
        response = from_chat(draft, body, self._new_message_id, self._new_call_id)
        if draft.store:
            ctx.defer(lambda ctx: self._keep(ctx, draft, response))
        return orjson.dumps(response)

    def stream(self, call: Call, ctx: RequestContext) -> ResponsesStream:
        draft = _draft(call)
        translation = ResponsesStream(draft, self._new_message_id, self._new_call_id)
        if draft.store:
            ctx.defer(lambda ctx: self._keep(ctx, draft, translation.response))
        return translation

    def error(self, error: GatewayError) -> tuple[int, bytes]:
        return error.status, error.envelope()

    async def _keep(self, ctx: RequestContext, draft: ResponseDraft, response: dict[str, Any] | None) -> None:
        """Store a response that was sent whole (after it was sent: the client does not wait for it)."""
        if response is not None and ctx.status == 200:
            await self._store.put(owner_of(ctx), draft.id, {"response": response, "items": draft.items})


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

    @router.delete("/v1/responses/{response_id}", summary="Delete a stored response")
    async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
        owner, _ = callers.identify(request)
        if not await store.delete(owner, response_id):
            raise not_found(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    return router
