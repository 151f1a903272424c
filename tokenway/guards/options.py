"""The ``guards:`` block of the YAML: named profiles of checks, each with an action.

A model names its profiles (``models[].guards``), a virtual key names its own (``KeyRecord.guards``);
a request runs both lists. Each profile has an ``input`` list (run on the request, before the cache
and the upstream) and an ``output`` list (run on the answer, JSON or stream).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Action = Literal["block", "mask", "flag"]
PiiKind = Literal["email", "phone", "card", "iban", "secret"]
DEFAULT_PII_KINDS: tuple[PiiKind, ...] = ("email", "phone", "card", "iban", "secret")


class _Check(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Action = "block"


class PiiCheck(_Check):
    """Personal data and secrets. ``kinds`` are found by one compiled regex (with Luhn and mod-97
    checks on card and IBAN candidates); ``presidio`` adds Presidio entities such as ``PERSON`` or
    ``LOCATION`` (the ``tokenway[presidio]`` extra and a spaCy model)."""

    check: Literal["pii"]
    kinds: Annotated[list[PiiKind], Field(min_length=1)] = list(DEFAULT_PII_KINDS)
    presidio: list[str] = []  # Presidio entity names, e.g. [PERSON, LOCATION]; empty: Presidio is not used
    presidio_model: str = "en_core_web_sm"  # the spaCy model Presidio's NLP engine loads
    presidio_threshold: Annotated[float, Field(ge=0, le=1)] = 0.5


class InjectionCheck(_Check):
    """Prompt injection in user and tool messages: heuristic rules, then (``classifier: true``) the
    classifier on the bundled MiniLM. Input only; ``mask`` is not an action for it."""

    check: Literal["injection"]
    classifier: bool = False

    @model_validator(mode="after")
    def _no_mask(self) -> InjectionCheck:
        if self.action == "mask":
            raise ValueError("an injection cannot be masked: use action 'block' or 'flag'")
        return self


class BlockedTermsCheck(_Check):
    """Words or phrases matched whole (word boundaries), case-insensitively; ``mask`` writes ``[REDACTED]``."""

    check: Literal["blocked_terms"]
    terms: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]


class MaxOutputCheck(_Check):
    """The answer's length in characters, per choice. Output only; ``mask`` cuts the text at ``limit``."""

    check: Literal["max_output_chars"]
    limit: Annotated[int, Field(ge=1)]


Check = Annotated[PiiCheck | InjectionCheck | BlockedTermsCheck | MaxOutputCheck, Field(discriminator="check")]


class GuardProfile(BaseModel):
    """Checks run on the request (``input``) and on the answer (``output``), in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: list[Check] = []
    output: list[Check] = []

    @model_validator(mode="after")
    def _stages(self) -> GuardProfile:
        for check in self.input:
            if isinstance(check, MaxOutputCheck):
                raise ValueError("max_output_chars checks the answer: put it under 'output'")
        for check in self.output:
            if isinstance(check, InjectionCheck):
                raise ValueError("injection checks the request's user and tool messages: put it under 'input'")
        return self


class GuardsConfig(BaseModel):
    """Named guard profiles, and how far back a stream's output guards look."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profiles: dict[str, GuardProfile] = {}
    # Characters of a streamed answer held back per choice, so that a match split across chunks is
    # still found; at least as long as the longest thing to mask. Nothing is delayed by more than this.
    stream_lookbehind: Annotated[int, Field(ge=8, le=4096)] = 64
