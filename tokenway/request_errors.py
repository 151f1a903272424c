"""A request that fails validation, as OpenAI's 400: the field named the way OpenAI names it.

``param`` is the path to the field (``messages[0].role``, ``tools[0].function``, ``stop``), ``code``
says what kind of problem it is (``missing_required_parameter``, ``invalid_type``, ``invalid_value``,
``array_above_max_length``...), and the message says what was wrong and what is allowed.

Nothing the client sent comes back: a prompt may hold a secret or personal data, and error bodies
end up in client logs. A message shows a number, a boolean, or a short word of lowercase letters
where the field is an enum (``'bot'`` for a role); anything else is described by its type only.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from tokenway.errors import InvalidRequest

# Fields whose keys are the client's (a map): an error names the field, not the key.
_MAPS = frozenset(("metadata", "logit_bias"))

_TYPE_NAMES = {
    "string_type": "a string", "bool_type": "a boolean", "int_type": "an integer", "float_type": "a number",
    "list_type": "an array", "dict_type": "an object", "model_type": "an object",
    "model_attributes_type": "an object", "none_required": "null",
}
_JSON_TYPES = (  # bool before int: True is an int to Python
    (bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"), (list, "an array"),
)
_ENUM_WORD = re.compile(r"[a-z][a-z_]{0,15}")  # no digits, no capitals: a secret has them
_BOUNDS = {  # error type: (its bound in ctx, the sign a value must have, the side it fell on)
    "greater_than_equal": ("ge", ">=", "below_min"), "greater_than": ("gt", ">", "below_min"),
    "less_than_equal": ("le", "<=", "above_max"), "less_than": ("lt", "<", "above_max"),
}
_SIDES = {"below_min": "below minimum", "above_max": "above maximum"}

Path = list[str | int]


def as_invalid_request(exc: ValidationError, body: bytes) -> InvalidRequest:
    """The 400 for the first thing wrong with ``body`` (which ``exc`` rejected)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] in ("json_invalid", "json_type"):
        return InvalidRequest(
            f"We could not parse the JSON body of your request ({first['msg']}). "
            "Send a valid JSON object with Content-Type: application/json.",
            code="invalid_json",
        )
    if first["type"] == "request_rule":  # a rule between fields; its error says it all
        ctx = first.get("ctx") or {}
        return InvalidRequest(ctx["message"], param=ctx["param"], code=ctx["code"])
    if not first["loc"]:
        return InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    try:
        document = json.loads(body)  # only on the error path: where each error's location lies
    except ValueError:
        document = None
    return _describe(*_choose(errors, document))


def _choose(errors: list[ErrorDetails], document: Any) -> tuple[ErrorDetails, Path, list[ErrorDetails]]:
    """The error to report, its field, and, where it is the wrong type, every type error at that
    field (a union's members each say which type they wanted); else an empty list.

    A union reports one error per member. Those that only say "not this type" at the union itself
    matter only when every member says so; otherwise the error from inside the member the value
    did fit (the list of 1,000 stops is too long) is the one to report."""
    found = [(error, *_path(error, document)) for error in errors if error["type"] != "checked_part"]
    # A content part of an unknown type (or none) fails the checked types' tag, then the schema for
    # other parts: that one's error, inside the part, says what is wrong.
    found = [f for f in found if not (f[0]["type"].startswith("union_tag_") and any(
        len(g[1]) > len(f[1]) and g[1][: len(f[1])] == f[1] for g in found))]
    error, path, tagged = found[0]
    while tagged and _is_type_error(error):
        same_field = [f for f in found if f[1][: len(path)] == path]
        deeper = [f for f in same_field if not (f[1] == path and _is_type_error(f[0]))]
        if not deeper:
            break
        deeper.sort(key=lambda f: _is_type_error(f[0]))  # a bad value inside a member says more than a type
        error, path, tagged = deeper[0]
    if _is_type_error(error):
        return error, path, [f[0] for f in found if f[1] == path and _is_type_error(f[0])]
    return error, path, []


def _path(error: ErrorDetails, document: Any) -> tuple[Path, bool]:
    """The JSON path of an error, and whether its location ends at a union member's name.

    pydantic's location mixes JSON keys and indexes with the names of union members (``str``,
    ``list[str]``, a role or a part type): a part is the JSON's where the document has it there."""
    loc = error["loc"]
    path: Path = []
    node = document
    tagged = False
    for i, part in enumerate(loc):
        if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(part, str) and isinstance(node, dict) and part in node:
            node = node[part]
        elif i == len(loc) - 1 and error["type"] == "missing":
            pass
        elif document is None and not any(c in str(part) for c in "[<-"):
            pass  # no document to go by: keep whatever does not look like a member's name
        else:
            tagged = True
            continue
        path.append(part)
        tagged = False
        if path[0] in _MAPS:
            return path[:1], False
    return path, tagged


def _is_type_error(error: ErrorDetails) -> bool:
    if error["type"] == "literal_error":  # one of some strings, given no string: the wrong type
        return not isinstance(error["input"], str)
    return error["type"] in _TYPE_NAMES


def _describe(error: ErrorDetails, path: Path, union: list[ErrorDetails]) -> InvalidRequest:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error["input"]
    param = _dotted(path) or None
    if union:
        expected = list(dict.fromkeys(_expected(e) for e in union or [error]))
        return InvalidRequest(
            f"Invalid type for '{param}': expected {_either(expected)}, but got {_json_type(value)} instead.",
            param=param, code="invalid_type")
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param,
                              code="missing_required_parameter")
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        return _bad_tag(param, ctx, value)
    if kind == "literal_error":
        return InvalidRequest(f"Invalid value for '{param}': expected {_expected(error)}{_but_got(value)}.",
                              param=param, code="invalid_value")
    if kind in _BOUNDS:
        key, sign, side = _BOUNDS[kind]
        number = "integer" if isinstance(ctx[key], int) else "decimal"
        return InvalidRequest(
            f"Invalid '{param}': {number} {_SIDES[side]} value. Expected a value {sign} "
            f"{_number(ctx[key])}, but got {_number(value)} instead.", param=param, code=f"{number}_{side}_value")
    if kind in ("too_long", "too_short", "string_too_long", "string_too_short"):
        return _bad_length(param, kind, ctx, value)
    if kind == "string_pattern_mismatch":
        return InvalidRequest(f"Invalid '{param}': string does not match pattern. Expected a string that "
                              f"matches the pattern '{ctx['pattern']}'.", param=param, code="invalid_value")
    return InvalidRequest(f"Invalid value for '{param}': {error['msg']}.", param=param, code="invalid_value")


def _bad_tag(param: str | None, ctx: dict[str, Any], value: Any) -> InvalidRequest:
    """A message's ``role``, a format's ``type``: missing, not a string, or none of the allowed."""
    field = str(ctx.get("discriminator", "")).strip("'")
    param = f"{param}.{field}" if param else field
    tag = value.get(field) if isinstance(value, dict) else None
    if tag is None:
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param,
                              code="missing_required_parameter")
    expected = f"one of {ctx['expected_tags']}" if "expected_tags" in ctx else "a string"
    if not isinstance(tag, str):
        return InvalidRequest(f"Invalid type for '{param}': expected {expected}, but got {_json_type(tag)} instead.",
                              param=param, code="invalid_type")
    return InvalidRequest(f"Invalid value for '{param}': expected {expected}{_but_got(tag)}.", param=param,
                          code="invalid_value")


def _bad_length(param: str | None, kind: str, ctx: dict[str, Any], value: Any) -> InvalidRequest:
    size = len(value) if isinstance(value, list | dict | str) else ctx.get("actual_length")
    if kind == "too_short" and isinstance(value, list) and not value:
        return InvalidRequest(f"Invalid '{param}': empty array. Expected an array with minimum length "
                              f"{ctx['min_length']}, but got an empty array instead.", param=param, code="empty_array")
    if kind == "string_too_short":
        return InvalidRequest(f"Invalid '{param}': string too short. Expected a string with minimum length "
                              f"{ctx['min_length']}, but got a string with length {size} instead.", param=param,
                              code="empty_string" if size == 0 else "string_below_min_length")
    if kind == "string_too_long":
        return InvalidRequest(f"Invalid '{param}': string too long. Expected a string with maximum length "
                              f"{ctx['max_length']}, but got a string with length {size} instead.", param=param,
                              code="string_above_max_length")
    if isinstance(value, dict):
        return InvalidRequest(f"Invalid '{param}': too many entries. Expected an object with at most "
                              f"{ctx['max_length']} entries, but got {size} instead.", param=param,
                              code="object_above_max_properties")
    if kind == "too_long":
        return InvalidRequest(f"Invalid '{param}': array too long. Expected an array with maximum length "
                              f"{ctx['max_length']}, but got an array with length {size} instead.", param=param,
                              code="array_above_max_length")
    return InvalidRequest(f"Invalid '{param}': array too short. Expected an array with minimum length "
                          f"{ctx['min_length']}, but got an array with length {size} instead.", param=param,
                          code="array_below_min_length")


def _expected(error: ErrorDetails) -> str:
    if error["type"] == "literal_error":
        return f"one of {(error.get('ctx') or {}).get('expected')}"
    return _TYPE_NAMES.get(error["type"], "another type")


def _either(options: list[str]) -> str:
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]


def _but_got(value: Any) -> str:
    """``, but got 'bot' instead`` where the value is safe to show (see the module's docstring)."""
    shown = _shown(value)
    return f", but got {shown} instead" if shown is not None else f", but got {_json_type(value)} that is none of them"


def _shown(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, str) and _ENUM_WORD.fullmatch(value):
        return f"'{value}'"
    return None


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value) if isinstance(value, int | float) else _json_type(value)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), "an object")


def _dotted(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out
