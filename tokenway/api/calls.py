"""A request body read into a ``Call``, as the endpoints check it: the schema, then the gateway's own
bounds. The live endpoints, the async API and batch lines all read calls here."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from tokenway.config import Limits
from tokenway.errors import InvalidRequest
from tokenway.protocol import CHAT_REQUEST, COMPLETION_REQUEST, parse_body
from tokenway.providers.base import Call
from tokenway.usage.cost import prompt_size, tokens_for_chars

REQUESTS: dict[str, tuple[TypeAdapter[Any], tuple[str, ...]]] = {
    "chat": (CHAT_REQUEST, ("model", "messages")),
    "completions": (COMPLETION_REQUEST, ("model", "prompt")),
}


def read_call(kind: str, body: bytes, limits: Limits) -> Call:
    """A ``chat`` or ``completions`` body checked as its live endpoint checks it (the job API submits with it)."""
    adapter, required = REQUESTS[kind]
    call = Call(kind, parse_body(adapter, body, required))  # type: ignore[arg-type]
    check_limits(call, limits)
    return call


def check_limits(call: Call, limits: Limits) -> None:
    """The gateway's bounds on a request (400 naming the field), and its prompt estimate, counted once."""
    body = call.body
    if call.kind == "chat":
        messages = body["messages"]
        if len(messages) > limits.max_messages:
            raise InvalidRequest(
                f"Too many messages: {len(messages)}; the limit is {limits.max_messages}.", param="messages"
            )
    chars, count = prompt_size(call)
    call.prompt_estimate = tokens_for_chars(chars, count)  # the limits and the budget need not count again
    param = "prompt" if count is None else "messages"
    if chars > limits.max_total_chars:
        raise InvalidRequest(
            f"The input is {chars} characters; the limit is {limits.max_total_chars}.", param=param,
            code="context_length_exceeded",
        )
    for field in ("max_output_tokens",) if call.kind == "responses" else ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if value is not None and value > limits.max_tokens:
            raise InvalidRequest(
                f"'{field}' is {value}; this gateway allows at most {limits.max_tokens}.", param=field
            )
