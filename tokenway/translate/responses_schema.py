"""What a valid ``POST /v1/responses`` body is, for a gateway that answers it through chat completions.

The same approach as ``request_schema`` (OpenAI's chat): ``TypedDict`` schemas validated in one
pydantic-core pass from bytes, strict types, and a 400 that names the field the way OpenAI names it
(``input[2].call_id``, ``tools[0].name``) through ``request_errors``. Unlike chat, fields the
gateway does not know are not forwarded (a chat backend would not understand them): they are
accepted and ignored, except those whose meaning cannot be kept (built-in tools, background runs,
server-side conversations), which are refused naming the field. ``prompt`` names a prompt version of
the gateway's own (tokenway/prompts).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Required

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter
from typing_extensions import TypedDict

from tokenway.request_schema import (
    _OPEN,
    JsonObjectFormat,
    Metadata,
    Name,
    NonEmpty,
    PromptId,
    TextFormat,
    broken_rule,
)

# ---- input items ----------------------------------------------------------------------------


class InputText(TypedDict, total=False):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Required[Literal["input_text"]]
    text: Required[str]


class OutputText(TypedDict, total=False):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Required[Literal["output_text"]]
    text: Required[str]


class Refusal(TypedDict, total=False):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Required[Literal["refusal"]]
    refusal: Required[str]


class InputImage(TypedDict, total=False):
    """An image by URL (``https:`` or a ``data:`` URL); uploaded files (``file_id``) are OpenAI's own."""

    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Required[Literal["input_image"]]
    image_url: Required[str]
    detail: Literal["low", "high", "auto", "original"]


ContentPart = Annotated[InputText | OutputText | Refusal | InputImage, Field(discriminator="type")]
Role = Literal["user", "assistant", "system", "developer"]


class Message(TypedDict, total=False):
    """A message item; ``type`` may be left out (the SDK's "easy" input message)."""

    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Literal["message"]
    role: Required[Role]
    content: Required[str | list[ContentPart]]


class TypedMessage(Message, total=False):
    type: Required[Literal["message"]]  # type: ignore[misc]


class FunctionCallItem(TypedDict, total=False):
    """A call the model made (an earlier response's output item, sent back as input)."""

    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Required[Literal["function_call"]]
    call_id: Required[NonEmpty]
    name: Required[Name]
    arguments: Required[str]


class FunctionCallOutputItem(TypedDict, total=False):
    """The caller's result for a function call."""

    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Required[Literal["function_call_output"]]
    call_id: Required[NonEmpty]
    output: Required[str | list[ContentPart]]


# Typed items by their tag, all in pydantic-core; an item without ``type`` is a message.
InputItem = Annotated[
    Annotated[TypedMessage | FunctionCallItem | FunctionCallOutputItem, Field(discriminator="type")] | Message,
    Field(union_mode="left_to_right"),
]
Input = str | Annotated[list[InputItem], Field(min_length=1)]


# ---- tools, tool choice, output format --------------------------------------------------------


class FunctionTool(TypedDict, total=False):
    """Responses' flat function tool (chat nests the same fields under ``function``)."""

    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Required[Literal["function"]]
    name: Required[Name]
    description: str | None
    parameters: dict[str, Any] | None
    strict: bool | None


class FunctionChoice(TypedDict, total=False):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Required[Literal["function"]]
    name: Required[str]


ToolChoice = Literal["none", "auto", "required"] | FunctionChoice


class JsonSchemaFormat(TypedDict, total=False):
    """Responses' flat form of chat's ``response_format: {type: json_schema, json_schema: {...}}``."""

    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Required[Literal["json_schema"]]
    name: Required[Name]
    schema: Required[dict[str, Any]]
    description: str
    strict: bool | None


class TextConfig(TypedDict, total=False):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    format: Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class Reasoning(TypedDict, total=False):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None


class Prompt(TypedDict, total=False):
    """A prompt version of the gateway's own (tokenway/prompts, docs/prompts.md), as Responses names one:
    ``version`` a string of digits (the SDK's type), each variable a string or an ``input_text`` part."""

    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]
    id: Required[PromptId]
    version: Annotated[str, Field(pattern=r"^[1-9][0-9]{0,8}$")] | Annotated[int, Field(ge=1)] | None
    variables: dict[str, str | InputText] | None


# ---- the request ----------------------------------------------------------------------------


class ResponsesRequest(TypedDict, total=False):
    """POST /v1/responses, as this gateway serves it through chat completions."""

    __pydantic_config__ = _OPEN  # type: ignore[misc]
    model: Required[NonEmpty]
    input: Input  # may be left out when ``prompt`` gives the messages
    instructions: str | None
    tools: Annotated[list[FunctionTool], Field(max_length=128)] | None
    tool_choice: ToolChoice | None
    parallel_tool_calls: bool | None
    max_output_tokens: Annotated[int, Field(ge=1)] | None
    temperature: Annotated[float, Field(ge=0, le=2)] | None
    top_p: Annotated[float, Field(ge=0, le=1)] | None
    text: TextConfig | None
    reasoning: Reasoning | None
    metadata: Metadata | None
    user: str
    store: bool | None
    stream: bool | None
    previous_response_id: NonEmpty | None
    prompt: Prompt | None


# Fields whose meaning a chat backend cannot keep: refused, saying why, rather than ignored.
_REFUSED = {
    "background": "Background responses are not served by this gateway; leave out 'background' (or use the "
                  "async API, POST /v1/async/chat/completions).",
    "conversation": "Server-side conversation objects are not kept by this gateway; chain responses with "
                    "'previous_response_id' instead.",
}


def _rules(request: dict[str, Any]) -> dict[str, Any]:
    for field, why in _REFUSED.items():
        if request.get(field) not in (None, False):
            raise broken_rule(field, why, "unsupported_parameter")
    choice = request.get("tool_choice")
    if isinstance(choice, dict):
        declared = {tool["name"] for tool in request.get("tools") or ()}
        if choice["name"] not in declared:
            raise broken_rule("tool_choice.name", "'tool_choice' names a function that is not declared in 'tools'; "
                              "name one of the functions in 'tools', or use 'auto', 'none' or 'required'.")
    if "input" not in request and request.get("prompt") is None:
        raise broken_rule("input", "Missing required parameter: 'input' (it may be left out only when 'prompt' "
                          "names a prompt version that gives the messages).", "missing_required_parameter")
    items = request.get("input")
    if isinstance(items, list):
        for i, item in enumerate(items):
            if item.get("type") != "function_call_output" and item.get("role") != "assistant":
                for j, part in enumerate(item.get("content") or ()):
                    if isinstance(part, dict) and part["type"] in ("output_text", "refusal"):
                        raise broken_rule(f"input[{i}].content[{j}].type", f"'{part['type']}' content is an "
                                          "assistant's; a user, system or developer message says 'input_text' or "
                                          "'input_image'.")
            elif item.get("role") == "assistant":
                for j, part in enumerate(item.get("content") or ()):
                    if isinstance(part, dict) and part["type"] in ("input_text", "input_image"):
                        raise broken_rule(f"input[{i}].content[{j}].type", f"'{part['type']}' content is the "
                                          "caller's; an assistant message says 'output_text' or 'refusal'.")
    return request


RESPONSES_REQUEST: TypeAdapter[Any] = TypeAdapter(Annotated[ResponsesRequest, AfterValidator(_rules)])


class NativeResponsesRequest(TypedDict, total=False):
    """POST /v1/responses for a model whose backends speak Responses (``responses: native``): the fields
    the gateway reads itself (its limits, budgets, stored state, streaming) are checked here; the rest
    (built-in tools, reasoning, background, ...) goes to the backend as it is, which checks it."""

    __pydantic_config__ = _OPEN  # type: ignore[misc]
    model: Required[NonEmpty]
    input: str | list[dict[str, Any]]
    instructions: str | None
    max_output_tokens: Annotated[int, Field(ge=1)] | None
    metadata: Metadata | None
    user: str
    store: bool | None
    stream: bool | None
    previous_response_id: NonEmpty | None


NATIVE_RESPONSES_REQUEST: TypeAdapter[Any] = TypeAdapter(NativeResponsesRequest)
