"""A prompt version: system and user templates with ``{{variable}}`` places, and how it renders.

Versions are immutable once created: a change is a new version, so a cache may keep any version
it has seen for as long as it likes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokenway.errors import InvalidRequest

PROMPT_ID = r"^[a-zA-Z0-9_.-]{1,64}$"
_VARIABLE = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


class PromptTemplate(BaseModel):
    """What an admin writes to make a new version (the admin API's body, the CLI's flags)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    system: Annotated[str, Field(min_length=1)] | None = None
    user: Annotated[str, Field(min_length=1)] | None = None
    note: str | None = None  # why this version exists, shown in listings

    @model_validator(mode="after")
    def _says_something(self) -> PromptTemplate:
        if self.system is None and self.user is None:
            raise ValueError("a prompt needs a 'system' part, a 'user' part, or both")
        return self


@dataclass(frozen=True, slots=True)
class PromptVersion:
    id: str
    version: int
    system: str | None
    user: str | None
    note: str | None
    created_at: float
    variables: tuple[str, ...] = ()  # the names its parts use, in order of first use (``of`` finds them)

    @classmethod
    def of(cls, prompt_id: str, version: int, system: str | None, user: str | None, note: str | None,
           created_at: float) -> PromptVersion:
        names = tuple(dict.fromkeys(_VARIABLE.findall((system or "") + "\n" + (user or ""))))
        return cls(prompt_id, version, system, user, note, created_at, names)

    def render(self, values: dict[str, str]) -> list[dict[str, Any]]:
        """The messages this version stands for, with ``values`` in place (400 naming a missing or unknown one)."""
        wanted = self.variables
        for name in wanted:
            if name not in values:
                raise InvalidRequest(
                    f"Missing required parameter: 'prompt.variables.{name}'. Prompt {self.id!r} version "
                    f"{self.version} uses the variables {', '.join(wanted)}.",
                    param=f"prompt.variables.{name}", code="missing_required_parameter")
        for name in values:
            if name not in wanted:
                uses = ", ".join(wanted) or "none"
                raise InvalidRequest(
                    f"Unknown parameter: 'prompt.variables.{name}'. Prompt {self.id!r} version {self.version} "
                    f"uses these variables: {uses}.", param=f"prompt.variables.{name}", code="unknown_parameter")

        def fill(text: str) -> str:
            return _VARIABLE.sub(lambda match: values[match[1]], text)

        messages = []
        if self.system is not None:
            messages.append({"role": "system", "content": fill(self.system)})
        if self.user is not None:
            messages.append({"role": "user", "content": fill(self.user)})
        return messages

    def public(self, active: bool = False) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "system": self.system, "user": self.user,
                "variables": list(self.variables), "note": self.note, "created_at": self.created_at, "active": active}


def parse_pin(pin: str) -> tuple[str, int | None]:
    """A pin as keys and models write it: ``name`` (its active version) or ``name@3``."""
    name, _, version = pin.partition("@")
    return name, int(version) if version else None


def check_pin(pin: str) -> str:
    """``pin``, if it is ``name`` or ``name@N`` (a ValueError saying how to write it otherwise)."""
    name, _, version = pin.partition("@")
    if not re.match(PROMPT_ID, name) or (version and not (version.isdigit() and int(version) >= 1)):
        raise ValueError(f"a prompt pin is written 'name' (its active version) or 'name@3', not {pin!r}")
    return pin
