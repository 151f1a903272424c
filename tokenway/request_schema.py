"""What a valid request to the OpenAI endpoints is: the request schemas and the rules between fields.

Requests are validated in one pass from bytes by pydantic-core into plain dicts (``TypedDict``
schemas): the fields we know are checked strictly (a string is not a boolean, ``"1"`` is not a
number; an integer is a number), the fields we don't (vendor extensions such as vLLM's ``top_k``,
``ignore_eos`` or ``chat_template_kwargs``) pass through untouched, and the fields the client did
not send stay absent, so the upstream sees what the client sent.

The same schemas document the endpoints in ``/openapi.json``: types, enums, ranges, lengths and
patterns are schema constraints, so the published document says what is enforced. The few rules
that tie fields together (``stream_options`` only with ``stream: true``, an assistant message
needs ``content`` or ``tool_calls``) run once per request at the end of the same pass, and are
written into the schema as well where JSON Schema can say them. ``request_errors`` turns a failure
into the 400 that names the field. docs/api.md lists every rule.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Required

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from tokenway.errors import InvalidRequest
from tokenway.request_errors import as_invalid_request

# Unknown keys are kept (vendor fields pass through); known ones take no coercion ("yes" is no bool).
_OPEN = ConfigDict(extra="allow", strict=True)


def _open(**schema: Any) -> ConfigDict:
    """``_OPEN``, documenting the rules of ``schema`` (JSON Schema) that a validator enforces."""
    return ConfigDict(extra="allow", strict=True, json_schema_extra=schema)


def _not_null(field: str) -> dict[str, Any]:
    return {"required": [field], "properties": {field: {"not": {"type": "null"}}}}


def _needs_true(field: str, flag: str) -> dict[str, Any]:
    """JSON Schema: when ``field`` is sent (not null), ``flag`` must be ``true``."""
    return {"if": _not_null(field), "then": {"required": [flag], "properties": {flag: {"const": True}}}}


NonEmpty = Annotated[str, Field(min_length=1)]
Name = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
# orjson, which writes the body to the upstream, stops at 64 bits; a bigger integer is no seed.
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
TokenId = Annotated[int, Field(ge=0, le=2**32 - 1)]


# ---- message content ------------------------------------------------------------------------


class TextPart(TypedDict, total=False):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Required[Literal["text"]]
    text: Required[str]


class ImageUrl(TypedDict, total=False):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    url: Required[str]
    detail: str


class ImagePart(TypedDict, total=False):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Required[Literal["image_url"]]
    image_url: Required[ImageUrl]


def _other_than(*checked: str) -> Any:
    """A ``type`` tag that is none of ``checked``: the entries of a type the gateway does not check."""

    def unchecked(kind: str) -> str:
        if kind in checked:  # a checked entry that failed its own schema: that error is the one to report
            raise PydanticCustomError("checked_part", "an entry of this type is checked by its own schema")
        return kind

    return Annotated[str, AfterValidator(unchecked), Field(json_schema_extra={"not": {"enum": [*checked]}})]


class OtherPart(TypedDict, total=False):
    """A content part of another type (audio, a file, a vendor's own): passed on as sent."""

    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Required[_other_than("text", "image_url")]  # type: ignore[valid-type]
    text: str  # where a part carries text, the prompt-size estimate counts it


# The checked types first, by their tag, all in pydantic-core; only a part of another type gets as
# far as ``OtherPart`` and its one Python call. (A callable discriminator costs a Python call and a
# copy of every part: 3x the time.)
ContentPart = Annotated[
    Annotated[TextPart | ImagePart, Field(discriminator="type")] | OtherPart, Field(union_mode="left_to_right")
]
Content = str | list[ContentPart]


# ---- messages -------------------------------------------------------------------------------


class FunctionCall(TypedDict, total=False):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    name: Required[str]
    arguments: Required[str]


class ToolCall(TypedDict, total=False):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    id: Required[str]
    type: Required[Literal["function"]]
    function: Required[FunctionCall]


class _Said(TypedDict, total=False):
    """What system, developer and user messages have in common: they must say something."""

    __pydantic_config__ = _OPEN  # type: ignore[misc]
    content: Required[Content]
    name: str


class SystemMessage(_Said, total=False):
    role: Required[Literal["system"]]


class DeveloperMessage(_Said, total=False):
    role: Required[Literal["developer"]]


class UserMessage(_Said, total=False):
    role: Required[Literal["user"]]


_ASSISTANT_SAYS = ("content", "tool_calls", "function_call", "refusal")


class AssistantMessage(TypedDict, total=False):
    """Needs one of ``content``, ``tool_calls``, ``function_call`` or ``refusal`` (not null)."""

    __pydantic_config__ = _open(anyOf=[_not_null(field) for field in _ASSISTANT_SAYS])  # type: ignore[misc]
    role: Required[Literal["assistant"]]
    content: Content | None
    refusal: str | None
    tool_calls: list[ToolCall]
    function_call: FunctionCall | None
    name: str


class ToolMessage(TypedDict, total=False):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    role: Required[Literal["tool"]]
    content: Required[Content]
    tool_call_id: Required[str]


class FunctionMessage(TypedDict, total=False):
    """The deprecated reply to a ``function_call``."""

    __pydantic_config__ = _OPEN  # type: ignore[misc]
    role: Required[Literal["function"]]
    content: Required[str | None]
    name: Required[str]


ChatMessage = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage,
    Field(discriminator="role"),
]


# ---- tools and output formats ---------------------------------------------------------------


class FunctionDefinition(TypedDict, total=False):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    name: Required[Name]
    description: str
    parameters: dict[str, Any]  # a JSON Schema object; the structured-output policy reads it
    strict: bool | None


class ToolDefinition(TypedDict, total=False):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Required[Literal["function"]]
    function: Required[FunctionDefinition]


class OtherTool(TypedDict, total=False):
    """A tool of another type (OpenAI's custom tools, a backend's own): passed on as sent."""

    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Required[_other_than("function")]  # type: ignore[valid-type]


Tool = Annotated[ToolDefinition | OtherTool, Field(union_mode="left_to_right")]


class FunctionName(TypedDict, total=False):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    name: Required[str]


class NamedToolChoice(TypedDict, total=False):
    """Call this function: it must be one of ``tools``."""

    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Required[Literal["function"]]
    function: Required[FunctionName]


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class TextFormat(TypedDict, total=False):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Required[Literal["text"]]


class JsonObjectFormat(TypedDict, total=False):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Required[Literal["json_object"]]


class JsonSchemaSpec(TypedDict, total=False):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    name: Required[Name]
    description: str
    schema: dict[str, Any]
    strict: bool | None


class JsonSchemaFormat(TypedDict, total=False):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Required[Literal["json_schema"]]
    json_schema: Required[JsonSchemaSpec]


class OtherFormat(TypedDict, total=False):
    """An output format of another type (vLLM's ``structural_tag``, a backend's own): passed on as sent."""

    __pydantic_config__ = _OPEN  # type: ignore[misc]
    type: Required[_other_than("text", "json_object", "json_schema")]  # type: ignore[valid-type]


ResponseFormat = Annotated[
    Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")] | OtherFormat,
    Field(union_mode="left_to_right"),
]


PromptId = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")]


class PromptVariables(TypedDict, total=False):
    """A prompt version to apply (tokenway/prompts): its system and user parts go before ``messages``."""

    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]
    id: Required[PromptId]
    version: Annotated[int, Field(ge=1)]  # absent: the prompt's active version
    variables: dict[str, str]


class StreamOptions(TypedDict, total=False):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    include_usage: bool


# ---- the requests ---------------------------------------------------------------------------

Stop = str | Annotated[list[str], Field(max_length=4)] | None
# Token ids are keys (JSON object keys are strings); patternProperties alone would let other keys by.
LogitBias = Annotated[
    dict[Annotated[str, Field(pattern=r"^[0-9]+$")], Annotated[float, Field(ge=-100, le=100)]],
    Field(json_schema_extra={"additionalProperties": False}),
]
Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]], Field(max_length=16)
]
Prompt = (
    str
    | Annotated[list[str], Field(min_length=1)]
    | Annotated[list[TokenId], Field(min_length=1)]
    | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)]
)


class _Sampling(TypedDict, total=False):
    __pydantic_config__ = _OPEN  # type: ignore[misc]
    model: Required[NonEmpty]
    stream: bool | None
    stream_options: StreamOptions | None
    temperature: Annotated[float, Field(ge=0, le=2)] | None
    top_p: Annotated[float, Field(ge=0, le=1)] | None
    n: Annotated[int, Field(ge=1, le=128)] | None
    stop: Stop
    seed: Int64 | None
    max_tokens: Annotated[int, Field(ge=1)] | None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None
    logit_bias: LogitBias | None
    user: str


class ChatCompletionRequest(_Sampling, total=False):
    """POST /v1/chat/completions. Unknown fields are accepted and forwarded."""

    __pydantic_config__ = _open(allOf=[  # type: ignore[misc]
        _needs_true("stream_options", "stream"), _needs_true("top_logprobs", "logprobs"),
        {"if": {"not": {"required": ["prompt"]}}, "then": {"properties": {"messages": {"minItems": 1}}}},
    ])
    messages: Required[Annotated[list[ChatMessage], Field(description="May be empty when 'prompt' is sent.")]]
    prompt: PromptVariables
    max_completion_tokens: Annotated[int, Field(ge=1)] | None
    tools: Annotated[list[Tool], Field(max_length=128)] | None
    tool_choice: ToolChoice | None
    parallel_tool_calls: bool | None
    response_format: ResponseFormat | None
    logprobs: bool | None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None
    metadata: Metadata | None


class CompletionRequest(_Sampling, total=False):
    """POST /v1/completions (legacy text completions). Unknown fields are accepted and forwarded."""

    __pydantic_config__ = _open(allOf=[_needs_true("stream_options", "stream")])  # type: ignore[misc]
    prompt: Required[Prompt]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None
    echo: bool | None
    suffix: str | None
    best_of: Annotated[int, Field(ge=0, le=20, description="At least `n`.")] | None


class SimpleChatRequest(TypedDict, total=False):
    """POST /chat: the minimal form. ``model`` defaults to the first configured model."""

    __pydantic_config__ = _OPEN  # type: ignore[misc]
    messages: Required[Annotated[list[ChatMessage], Field(min_length=1)]]
    stream: bool | None
    model: NonEmpty
    prompt: PromptVariables


# ---- the rules between fields (one Python call per request, after the pass) -----------------


def broken_rule(param: str, message: str, code: str = "invalid_value") -> PydanticCustomError:
    """A rule between fields, broken: ``request_errors`` turns it into the 400 naming ``param``."""
    return PydanticCustomError("request_rule", "{message}", {"message": message, "param": param, "code": code})


def _message_rules(request: dict[str, Any]) -> None:
    messages = request["messages"]
    if not messages and "prompt" not in request:  # a prompt version supplies the messages
        raise broken_rule("messages", "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                          "but got an empty array instead.", "empty_array")
    for message in messages:  # a plain loop, the common case first: this runs on every request
        if message["role"] == "assistant" and message.get("content") is None and not _says_other(message):
            i = messages.index(message)
            raise broken_rule(f"messages[{i}].content", f"Missing required parameter: 'messages[{i}].content'. An "
                              "assistant message needs 'content' or 'tool_calls' (or 'function_call' or 'refusal').",
                              "missing_required_parameter")


def _says_other(message: dict[str, Any]) -> bool:
    return any(message.get(field) is not None for field in _ASSISTANT_SAYS[1:])


def _stream_rules(request: dict[str, Any]) -> None:
    if request.get("stream_options") is not None and request.get("stream") is not True:
        raise broken_rule("stream_options", "The 'stream_options' parameter is only allowed when 'stream' is enabled.")


def _chat_rules(request: dict[str, Any]) -> dict[str, Any]:
    _stream_rules(request)
    _message_rules(request)
    if request.get("top_logprobs") is not None and request.get("logprobs") is not True:
        raise broken_rule("top_logprobs", "'top_logprobs' is only allowed when 'logprobs' is true.")
    choice = request.get("tool_choice")
    if isinstance(choice, dict):
        declared = {tool["function"]["name"] for tool in request.get("tools") or () if tool["type"] == "function"}
        if choice["function"]["name"] not in declared:
            raise broken_rule("tool_choice", "'tool_choice' names a function that is not declared in 'tools'; "
                              "name one of the functions in 'tools', or use 'auto', 'none' or 'required'.")
    return request


def _completion_rules(request: dict[str, Any]) -> dict[str, Any]:
    _stream_rules(request)
    best_of, n = request.get("best_of"), request.get("n") or 1
    if best_of is not None and best_of < n:
        raise broken_rule("best_of", f"'best_of' must be at least 'n' ({n}); it is {best_of}.")
    return request


def _simple_rules(request: dict[str, Any]) -> dict[str, Any]:
    _message_rules(request)
    return request


CHAT_REQUEST: TypeAdapter[Any] = TypeAdapter(
    Annotated[ChatCompletionRequest, AfterValidator(_chat_rules)])
COMPLETION_REQUEST: TypeAdapter[Any] = TypeAdapter(
    Annotated[CompletionRequest, AfterValidator(_completion_rules)])
SIMPLE_CHAT_REQUEST: TypeAdapter[Any] = TypeAdapter(
    Annotated[SimpleChatRequest, AfterValidator(_simple_rules)])


# orjson, which writes the body on to the upstream, takes integers of at most 64 bits; jiter takes
# any. Such a number has 20 digits or more: a scan of the bytes in C (every digit made a 0, then a
# substring search; a regex is ten times slower), and a walk of the request only on a hit.
_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_TWENTY_DIGITS = b"0" * 20


def parse_body(adapter: TypeAdapter[Any], body: bytes, required: tuple[str, ...]) -> dict[str, Any]:
    """Validate a JSON request body; raise ``InvalidRequest`` naming the first bad field."""
    if not body:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        request: dict[str, Any] = adapter.validate_json(body)
    except ValidationError as exc:
        raise as_invalid_request(exc, body) from None
    for name in required:
        if name not in request:
            raise InvalidRequest(
                f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
            )
    if _TWENTY_DIGITS in body.translate(_DIGITS_AS_ZEROS):
        for name, value in request.items():
            if _has_huge_int(value):
                raise InvalidRequest(f"Invalid value for '{name}': a number in it does not fit in 64 bits.",
                                     param=name, code="invalid_value")
    return request


def _has_huge_int(value: Any) -> bool:
    if isinstance(value, int):
        return not -(2**63) <= value < 2**64
    if isinstance(value, list):
        return any(_has_huge_int(item) for item in value)
    if isinstance(value, dict):
        return any(_has_huge_int(item) for item in value.values())
    return False
