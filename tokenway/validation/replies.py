"""What a request asks of its reply (JSON, a schema, declared tools), and whether a reply keeps to it.

``Contract.of(body)`` reads the request once; ``check(reply)`` looks at every choice of a chat
completion and returns the first problem, precisely: the JSON error with its position, or the
schema's path and message, or the tool call that names an undeclared tool or breaks its
parameters. ``retry_messages(problem)`` is what goes back into the conversation for another try.
A refusal (``message.refusal``) is an answer, not a problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator

from tokenway.errors import InvalidRequest
from tokenway.validation.schemas import InvalidSchema, SchemaCache

JSON_FORMATS = ("json_object", "json_schema")
Kind = Literal["json", "schema", "tool_name", "tool_arguments", "empty"]
_SHOWN = 300  # characters of a validation message kept (jsonschema quotes the offending value)


@dataclass(slots=True)
class Problem:
    """Why a reply does not keep to its contract (the first thing found)."""

    kind: Kind  # what the failures metric counts it as
    where: str  # e.g. "choices[0].message.content"
    detail: str  # the JSON error and its position, or the schema path and message
    message: dict[str, Any]  # the assistant message at fault, as it goes back into the conversation
    tool_errors: dict[int, str] = field(default_factory=dict)  # tool call index -> what was wrong with it

    def describe(self) -> str:
        return f"{self.where}: {self.detail}"


@dataclass(slots=True)
class Contract:
    """What the request asked of the reply."""

    format: str | None  # "json_object", "json_schema", or None
    schema: Validator | None = None  # the response format's schema
    schema_name: str = ""
    tools: dict[str, Validator | None] | None = None  # declared function tools: name -> parameters' validator

    @classmethod
    def of(cls, body: dict[str, Any], schemas: SchemaCache) -> Contract | None:
        """The contract of a chat request, None when it asks nothing checkable. A schema that is not
        one is the client's error (400 naming it), found before any upstream call."""
        response_format = body.get("response_format")
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        contract = cls(kind if kind in JSON_FORMATS else None)
        if contract.format == "json_schema":
            assert isinstance(response_format, dict)
            spec = response_format.get("json_schema")
            if isinstance(spec, dict) and "schema" in spec:
                contract.schema = _compile(schemas, spec["schema"], "response_format.json_schema.schema")
                contract.schema_name = str(spec.get("name") or "")
        tools = body.get("tools")
        if tools:
            contract.tools = {}
            for i, tool in enumerate(tools):
                function = tool.get("function") if isinstance(tool, dict) else None
                if not isinstance(function, dict) or tool.get("type", "function") != "function":
                    continue  # custom and built-in tools declare no JSON parameters
                parameters = function.get("parameters")
                contract.tools[str(function.get("name"))] = (
                    None if parameters is None else _compile(schemas, parameters, f"tools[{i}].function.parameters"))
        if contract.format is None and not contract.tools:
            return None
        return contract

    @property
    def param(self) -> str:
        """The request field the contract came from, for the error envelope."""
        return "response_format" if self.format is not None else "tools"

    def check(self, reply: dict[str, Any]) -> Problem | None:
        """The first way a chat completion ``reply`` breaks the contract, or None."""
        for i, choice in enumerate(reply.get("choices") or []):
            message = choice.get("message") or {}
            if message.get("refusal"):
                continue
            calls = message.get("tool_calls")
            if calls and self.tools is not None:
                problem = self._check_calls(i, message, calls)
            elif self.format is not None:
                problem = self._check_content(i, message)
            else:
                problem = None
            if problem is not None:
                return problem
        return None

    def _check_content(self, i: int, message: dict[str, Any]) -> Problem | None:
        where = f"choices[{i}].message.content"
        content = message.get("content")
        echo = {"role": "assistant", "content": content if isinstance(content, str) else ""}
        if not isinstance(content, str) or not content.strip():
            return Problem("empty", where, "the reply has no content; a JSON value was asked for", echo)
        try:
            value = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            return Problem("json", where, f"not valid JSON ({exc})", echo)
        if self.format == "json_object" and not isinstance(value, dict):
            return Problem("schema", where, f"a JSON {_json_type(value)}, not the JSON object asked for", echo)
        if self.schema is not None:
            error = first_error(self.schema, value)
            if error is not None:
                return Problem("schema", where, error, echo)
        return None

    def _check_calls(self, i: int, message: dict[str, Any], calls: list[dict[str, Any]]) -> Problem | None:
        assert self.tools is not None
        first: tuple[Kind, str, str] | None = None
        errors: dict[int, str] = {}
        for j, call in enumerate(calls):
            if call.get("type", "function") != "function":
                continue
            function = call.get("function") or {}
            name, where = function.get("name"), f"choices[{i}].message.tool_calls[{j}].function"
            found: tuple[Kind, str, str] | None = None
            if name not in self.tools:
                declared = ", ".join(sorted(self.tools)) or "none"
                found = ("tool_name", where + ".name", f"{name!r} is not a declared tool (declared: {declared})")
            else:
                try:
                    value = orjson.loads(function.get("arguments") or "")
                except orjson.JSONDecodeError as exc:
                    found = ("tool_arguments", where + ".arguments", f"not valid JSON ({exc})")
                else:
                    validator = self.tools[name]
                    error = None if validator is None else first_error(validator, value)
                    if error is not None:
                        found = ("tool_arguments", where + ".arguments", f"breaks the parameters of {name!r}: {error}")
            if found is not None:
                errors[j] = found[2]
                first = first or found
        if first is None:
            return None
        echo = {"role": "assistant", "content": message.get("content") if isinstance(message.get("content"), str)
                else None, "tool_calls": [_echo_call(j, call) for j, call in enumerate(calls)]}
        return Problem(first[0], first[1], first[2], echo, errors)


def retry_messages(problem: Problem, contract: Contract) -> list[dict[str, Any]]:
    """The messages that follow the conversation for another attempt: the reply at fault, and what
    was wrong with it (a tool call at fault gets its answer as the call's tool result, as the
    protocol requires one per call)."""
    if problem.tool_errors:
        calls = problem.message["tool_calls"]
        results = [{"role": "tool", "tool_call_id": call["id"],
                    "content": (f"Error: this call was not run; its {problem.tool_errors[j]}. Call the tool again "
                                "with a declared name and arguments that match its parameters."
                                if j in problem.tool_errors else
                                "Not run: another call in the same turn was invalid. Call it again if still needed.")}
                   for j, call in enumerate(calls)]
        return [problem.message, *results]
    wanted = (f"JSON that conforms to the schema '{contract.schema_name}'" if contract.schema is not None and
              contract.schema_name else "JSON that conforms to the given schema" if contract.schema is not None
              else "a JSON object")
    note = (f"Your last reply was rejected: {problem.describe()}. Reply again with only {wanted}: no prose, "
            "no code fences.")
    return [problem.message, {"role": "user", "content": note}]


def first_error(validator: Validator, value: Any) -> str | None:
    """The most relevant schema error for ``value``, as its JSON path and message; None if it conforms."""
    error = best_match(validator.iter_errors(value))
    if error is None:
        return None
    message = error.message if len(error.message) <= _SHOWN else error.message[:_SHOWN] + "..."
    return f"at {error.json_path}: {message}"


def _compile(schemas: SchemaCache, schema: Any, param: str) -> Validator:
    try:
        return schemas.validator(schema)
    except InvalidSchema as exc:
        raise InvalidRequest(f"Invalid JSON Schema in '{param}': {exc}.", param=param, code="invalid_schema") from None


def _echo_call(j: int, call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    return {"id": call.get("id") or f"call_{j}", "type": "function",
            "function": {"name": str(function.get("name") or ""), "arguments": str(function.get("arguments") or "")}}


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"
