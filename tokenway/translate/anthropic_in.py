"""Anthropic's Messages request: its schema, and the OpenAI chat body it becomes.

The schema is checked in one pydantic-core pass from bytes, as the OpenAI endpoints are
(``request_schema``): known fields strictly (a string is no number), unknown top-level fields
refused as Anthropic refuses them ("Extra inputs are not permitted"), unknown keys inside blocks
ignored (the SDK adds ``cache_control``, ``citations`` and such, which a chat backend has no use for).
The error names the field in Anthropic's terms (``messages[0].content[1].tool_use_id``).

What becomes what (docs/anthropic.md has the table):

- ``system`` (a string or text blocks) -> the first, system, message.
- a ``user`` turn: its text and image blocks -> one user message; each ``tool_result`` -> a ``tool``
  message, in the order they came (chat wants a call's answer right after the assistant's call).
- an ``assistant`` turn: text -> ``content``, each ``tool_use`` -> a ``tool_calls`` entry (its input as
  the JSON arguments); ``thinking`` and ``redacted_thinking`` blocks are dropped: a chat backend
  takes no reasoning back, and Anthropic's signatures mean nothing to it.
- ``tools`` -> function tools; ``tool_choice`` -> chat's (``any`` is ``required``);
  ``stop_sequences`` -> ``stop``; ``metadata.user_id`` -> ``user``; ``top_k`` goes on as the vendor
  field vLLM, SGLang and llama.cpp read; ``output_config.format`` (a JSON schema) -> ``response_format``;
  ``thinking``, ``output_config.effort`` and Anthropic's service knobs (``service_tier``, ``speed``,
  ``inference_geo``, ``container``, ``cache_control``...) are accepted and not sent.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Required

import orjson
from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter
from typing_extensions import TypedDict

from tokenway.request_schema import NonEmpty, broken_rule

# Known keys strict; unknown keys inside a block are kept by pydantic and never read here.
_BLOCK = ConfigDict(extra="allow", strict=True)
_CLOSED = ConfigDict(extra="forbid", strict=True)

ToolName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,128}$")]


class TextBlock(TypedDict, total=False):
    __pydantic_config__ = _BLOCK  # type: ignore[misc]
    type: Required[Literal["text"]]
    text: Required[str]


class Base64Source(TypedDict, total=False):
    __pydantic_config__ = _BLOCK  # type: ignore[misc]
    type: Required[Literal["base64"]]
    media_type: Required[Literal["image/jpeg", "image/png", "image/gif", "image/webp"]]
    data: Required[str]


class UrlSource(TypedDict, total=False):
    __pydantic_config__ = _BLOCK  # type: ignore[misc]
    type: Required[Literal["url"]]
    url: Required[NonEmpty]


class ImageBlock(TypedDict, total=False):
    __pydantic_config__ = _BLOCK  # type: ignore[misc]
    type: Required[Literal["image"]]
    source: Required[Annotated[Base64Source | UrlSource, Field(discriminator="type")]]


class ToolUseBlock(TypedDict, total=False):
    __pydantic_config__ = _BLOCK  # type: ignore[misc]
    type: Required[Literal["tool_use"]]
    id: Required[NonEmpty]
    name: Required[ToolName]
    input: Required[dict[str, Any]]


class ToolResultBlock(TypedDict, total=False):
    __pydantic_config__ = _BLOCK  # type: ignore[misc]
    type: Required[Literal["tool_result"]]
    tool_use_id: Required[NonEmpty]
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]]
    is_error: bool


class ThinkingBlock(TypedDict, total=False):
    __pydantic_config__ = _BLOCK  # type: ignore[misc]
    type: Required[Literal["thinking"]]
    thinking: Required[str]
    signature: str


class RedactedThinkingBlock(TypedDict, total=False):
    __pydantic_config__ = _BLOCK  # type: ignore[misc]
    type: Required[Literal["redacted_thinking"]]
    data: Required[str]


Block = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class Message(TypedDict, total=False):
    __pydantic_config__ = _CLOSED  # type: ignore[misc]
    role: Required[Literal["user", "assistant"]]
    content: Required[str | list[Block]]


class ToolDefinition(TypedDict, total=False):
    __pydantic_config__ = _BLOCK  # type: ignore[misc]
    name: Required[ToolName]
    description: str
    input_schema: Required[dict[str, Any]]
    type: Literal["custom"] | None


class _Choice(TypedDict, total=False):
    __pydantic_config__ = _BLOCK  # type: ignore[misc]
    disable_parallel_tool_use: bool


class AutoChoice(_Choice, total=False):
    type: Required[Literal["auto"]]


class AnyChoice(_Choice, total=False):
    type: Required[Literal["any"]]


class NoneChoice(_Choice, total=False):
    type: Required[Literal["none"]]


class NamedChoice(_Choice, total=False):
    type: Required[Literal["tool"]]
    name: Required[ToolName]


ToolChoice = Annotated[AutoChoice | AnyChoice | NoneChoice | NamedChoice, Field(discriminator="type")]


class Metadata(TypedDict, total=False):
    __pydantic_config__ = _CLOSED  # type: ignore[misc]
    user_id: Annotated[str, Field(max_length=256)] | None


class JsonOutputFormat(TypedDict, total=False):
    __pydantic_config__ = _BLOCK  # type: ignore[misc]
    type: Required[Literal["json_schema"]]
    schema: Required[dict[str, Any]]


class OutputConfig(TypedDict, total=False):
    __pydantic_config__ = _BLOCK  # type: ignore[misc]
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None
    format: JsonOutputFormat | None


class Thinking(TypedDict, total=False):
    __pydantic_config__ = _BLOCK  # type: ignore[misc]
    type: Required[Literal["enabled", "disabled", "adaptive"]]
    budget_tokens: Annotated[int, Field(ge=1024)]


class _Counted(TypedDict, total=False):
    """What ``/v1/messages`` and ``/v1/messages/count_tokens`` both read."""

    __pydantic_config__ = _CLOSED  # type: ignore[misc]
    model: Required[NonEmpty]
    messages: Required[Annotated[list[Message], Field(min_length=1)]]
    system: str | list[TextBlock]
    tools: Annotated[list[ToolDefinition], Field(max_length=128)]
    tool_choice: ToolChoice
    thinking: Thinking
    output_config: OutputConfig | None
    # Anthropic's own knobs, accepted (the SDK sends them) and not sent on: a chat backend has none of them.
    speed: Literal["standard", "fast"] | None
    cache_control: dict[str, Any] | None
    user_profile_id: str
    workspace_id: str


class CountTokensRequest(_Counted, total=False):
    """POST /v1/messages/count_tokens (Anthropic's). Unknown fields are refused, as Anthropic refuses them."""

    output_format: JsonOutputFormat | None  # the SDK's older name for output_config.format


class MessagesRequest(_Counted, total=False):
    """POST /v1/messages (Anthropic's). Unknown fields are refused, as Anthropic refuses them."""

    max_tokens: Required[Annotated[int, Field(ge=1)]]
    stop_sequences: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=16)]
    stream: bool
    temperature: Annotated[float, Field(ge=0, le=1)]
    top_p: Annotated[float, Field(ge=0, le=1)]
    top_k: Annotated[int, Field(ge=0)]
    metadata: Metadata
    service_tier: Literal["auto", "standard_only"] | None
    inference_geo: str | None
    container: str | dict[str, Any] | None
    diagnostics: dict[str, Any] | None


def _rules(request: dict[str, Any]) -> dict[str, Any]:
    """What JSON Schema does not say: a named tool must be declared; tool blocks sit in the right turns."""
    choice = request.get("tool_choice")
    if choice is not None and choice["type"] == "tool":
        if choice["name"] not in {tool["name"] for tool in request.get("tools") or ()}:
            raise broken_rule("tool_choice.name", "'tool_choice.name' names a tool that is not in 'tools'; name "
                              "one of them, or use 'auto', 'any' or 'none'.")
    for i, message in enumerate(request["messages"]):
        content = message["content"]
        if isinstance(content, str):
            continue
        wrong = "tool_result" if message["role"] == "assistant" else "tool_use"
        for j, block in enumerate(content):
            if block["type"] == wrong:
                raise broken_rule(f"messages[{i}].content[{j}].type", f"A '{wrong}' block cannot be in a "
                                  f"'{message['role']}' message: tool_use blocks are the assistant's, "
                                  "tool_result blocks the user's.")
    return request


MESSAGES_REQUEST: TypeAdapter[Any] = TypeAdapter(Annotated[MessagesRequest, AfterValidator(_rules)])
COUNT_TOKENS_REQUEST: TypeAdapter[Any] = TypeAdapter(Annotated[CountTokensRequest, AfterValidator(_rules)])

_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def chat_body(request: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat body for a validated Messages request (``MESSAGES_REQUEST``)."""
    body: dict[str, Any] = {"model": request["model"], "messages": chat_messages(request),
                            "max_tokens": request["max_tokens"]}
    if request.get("stream"):
        # The closing message_delta carries output tokens: the internal stream must report usage.
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    for field in ("temperature", "top_p", "top_k"):
        if field in request:
            body[field] = request[field]
    if request.get("stop_sequences"):
        body["stop"] = request["stop_sequences"]
    user = (request.get("metadata") or {}).get("user_id")
    if user:
        body["user"] = user
    output_format = (request.get("output_config") or {}).get("format")
    if output_format is not None:  # the structured-output policy checks the reply against it, as for chat
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "output", "schema": output_format["schema"]}}
    tools = request.get("tools")
    if tools:
        body["tools"] = [chat_tool(tool) for tool in tools]
    choice = request.get("tool_choice")
    if choice is not None:
        body["tool_choice"] = (_CHOICES.get(choice["type"]) or
                               {"type": "function", "function": {"name": choice["name"]}})
        if choice.get("disable_parallel_tool_use") and tools:
            body["parallel_tool_calls"] = False
    return body


def chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def chat_messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages of a Messages request: its system prompt, then every turn translated."""
    out: list[dict[str, Any]] = []
    system = request.get("system")
    if system:
        text = system if isinstance(system, str) else "\n\n".join(block["text"] for block in system)
        out.append({"role": "system", "content": text})
    for message in request["messages"]:
        content = message["content"]
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
        elif message["role"] == "assistant":
            out.append(_assistant(content))
        else:
            out.extend(_user(content))
    return out


def _assistant(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    texts = [block["text"] for block in blocks if block["type"] == "text"]
    calls = [{"id": block["id"], "type": "function",
              "function": {"name": block["name"], "arguments": orjson.dumps(block["input"]).decode()}}
             for block in blocks if block["type"] == "tool_use"]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _user(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A user turn's blocks as chat messages, in order: runs of text and images make one user
    message each; each tool result a tool message (an image it returned follows in a user message,
    as chat's tool messages take text only)."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in blocks:
        kind = block["type"]
        if kind == "text":
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append(_image(block))
        elif kind == "tool_result":
            if parts:
                out.append(_user_message(parts))
                parts = []
            out.append(_tool_message(block))
            content = block.get("content")
            if isinstance(content, list):
                images = [_image(item) for item in content if item["type"] == "image"]
                if images:
                    out.append(_user_message(images))
        # thinking blocks in a user turn say nothing to a chat backend: dropped
    if parts:
        out.append(_user_message(parts))
    return out


def _user_message(parts: list[dict[str, Any]]) -> dict[str, Any]:
    if len(parts) == 1 and parts[0]["type"] == "text":
        return {"role": "user", "content": parts[0]["text"]}
    return {"role": "user", "content": parts}


def _tool_message(block: dict[str, Any]) -> dict[str, Any]:
    content = block.get("content", "")
    text = content if isinstance(content, str) else "".join(
        item["text"] for item in content if item["type"] == "text")
    if block.get("is_error"):  # chat has no error flag on a tool message: the text says it
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}


def _image(block: dict[str, Any]) -> dict[str, Any]:
    source = block["source"]
    url = source["url"] if source["type"] == "url" else f"data:{source['media_type']};base64,{source['data']}"
    return {"type": "image_url", "image_url": {"url": url}}
