"""The ``record:`` config section: which requests are recorded, how many, and for how long."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class RecordConfig(BaseModel):
    """Recording is off unless ``models`` or ``keys`` names something (then the policy is in the list)."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = []  # record requests to these models ("*": every model)
    keys: list[str] = []  # and requests made with these key ids
    sample: Annotated[float, Field(ge=0, le=1)] = 1.0  # share of the chosen requests recorded
    max_records: Annotated[int, Field(ge=1)] = 10_000  # the oldest go first past this many
    retention_s: Annotated[float, Field(gt=0)] = 7 * 86400  # records older than this are deleted
    max_body_chars: Annotated[int, Field(ge=256)] = 65_536  # a request or response text longer is cut here
    flush_s: Annotated[float, Field(gt=0)] = 0.5  # how often queued records are written, in one batch

    @property
    def enabled(self) -> bool:
        return bool(self.models or self.keys)
