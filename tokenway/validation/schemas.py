"""JSON Schema validators, compiled once per distinct schema and kept in a bounded table.

A schema arrives with every request that asks for one (``response_format.json_schema.schema``,
each tool's ``function.parameters``), usually the same few over and over; compiling one costs
tens of microseconds, a lookup by its canonical JSON (keys sorted) a few.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import orjson
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

MAX_SCHEMAS = 512  # distinct schemas kept; the least recently used goes first


class InvalidSchema(ValueError):
    """The schema itself is not a valid JSON Schema (the message says where)."""


class SchemaCache:
    """Validators by the schema's canonical JSON, least recently used dropped past ``size``."""

    def __init__(self, size: int = MAX_SCHEMAS) -> None:
        self._size = size
        self._validators: OrderedDict[bytes, Validator] = OrderedDict()

    def __len__(self) -> int:
        return len(self._validators)

    def validator(self, schema: Any) -> Validator:
        """The compiled validator for ``schema``; raises ``InvalidSchema`` if it is not one."""
        try:
            key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
        except TypeError as exc:  # cannot come from parsed JSON, but a caller may pass anything
            raise InvalidSchema(f"the schema is not JSON: {exc}") from None
        found = self._validators.get(key)
        if found is not None:
            self._validators.move_to_end(key)
            return found
        if not isinstance(schema, dict | bool):
            raise InvalidSchema(f"a JSON Schema is an object (or true/false), not {type(schema).__name__}")
        cls = validator_for(schema)
        try:
            cls.check_schema(schema)
        except SchemaError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
            raise InvalidSchema(f"at {where}: {exc.message}") from None
        validator: Validator = cls(schema)
        self._validators[key] = validator
        if len(self._validators) > self._size:
            self._validators.popitem(last=False)
        return validator
