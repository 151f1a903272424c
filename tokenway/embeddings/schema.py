"""What a valid ``POST /v1/embeddings`` is, and the body read into an ``embeddings`` ``Call``.

As for chat (``tokenway.request_schema``), the body is validated in one strict pass into a plain
dict: known fields are checked (``input`` a number, an empty list, ``dimensions: 0`` or
``encoding_format: "hex"`` is a 400 naming the field), unknown ones pass through to the backend.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Required

from pydantic import ConfigDict, Field, TypeAdapter
from typing_extensions import TypedDict

from tokenway.config import Limits
from tokenway.errors import InvalidRequest
from tokenway.protocol import parse_body
from tokenway.providers.base import Call
from tokenway.usage.cost import prompt_size, tokens_for_chars

MAX_INPUTS = 2048  # OpenAI's bound on the texts (or token arrays) of one request

Text = Annotated[str, Field(min_length=1)]
TokenId = Annotated[int, Field(ge=0, le=2**32 - 1)]
Tokens = Annotated[list[TokenId], Field(min_length=1)]
Input = (
    Text
    | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]
    | Tokens
    | Annotated[list[Tokens], Field(min_length=1, max_length=MAX_INPUTS)]
)
# One text or one token array: what is embedded into one vector.
Item = str | list[int]


class EmbeddingsRequest(TypedDict, total=False):
    """POST /v1/embeddings. Unknown fields are accepted and forwarded."""

    __pydantic_config__ = ConfigDict(extra="allow", strict=True)  # type: ignore[misc]
    model: Required[Annotated[str, Field(min_length=1)]]
    input: Required[Input]
    encoding_format: Literal["float", "base64"]
    dimensions: Annotated[int, Field(ge=1, description="At most the model's own size (384 for the local "
                                                       "MiniLM); a smaller one truncates and re-normalises.")]
    user: str


EMBEDDINGS_REQUEST: TypeAdapter[Any] = TypeAdapter(EmbeddingsRequest)


def read_embeddings(body: bytes, limits: Limits) -> Call:
    """An ``embeddings`` call from a request body, validated, with its prompt estimate; ``InvalidRequest``
    names the field."""
    call = Call("embeddings", parse_body(EMBEDDINGS_REQUEST, body, ("model", "input")))
    if call.body.get("stream") is not None:  # the request path would take it for a stream
        raise InvalidRequest("Embeddings are not streamed; remove 'stream'.", param="stream", code="invalid_value")
    chars, _ = prompt_size(call)
    if chars > limits.max_total_chars:
        raise InvalidRequest(f"The input is {chars} characters; the limit is {limits.max_total_chars}.",
                             param="input", code="context_length_exceeded")
    call.prompt_estimate = tokens_for_chars(chars, None)
    return call


def items(body: dict[str, Any]) -> list[Item]:
    """A validated request's ``input`` as a list of items, one vector each."""
    value = body["input"]
    if isinstance(value, str) or isinstance(value[0], int):
        return [value]
    return list(value)


# The answer, for /openapi.json (built by ``tokenway.embeddings.vectors.answer``, or relayed from the backend).
EMBEDDINGS_ANSWER: dict[str, Any] = {
    "type": "object", "title": "Embeddings", "required": ["object", "data", "model", "usage"],
    "properties": {
        "object": {"const": "list"}, "model": {"type": "string"},
        "data": {"type": "array", "items": {
            "type": "object", "required": ["object", "index", "embedding"],
            "properties": {"object": {"const": "embedding"}, "index": {"type": "integer"}, "embedding": {
                "anyOf": [{"type": "array", "items": {"type": "number"}},
                          {"type": "string", "description": "base64 of little-endian float32 values"}]}},
        }},
        "usage": {"type": "object", "required": ["prompt_tokens", "total_tokens"],
                  "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}},
    },
}
