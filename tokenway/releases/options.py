"""A model's ``release:`` block: its versions and their weights, how callers stick, and a shadow."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

StickyBy = Literal["user", "key", "session"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VersionConfig(_Strict):
    """One version: a configured model (the released model itself, or another) and its share of callers."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    model: Annotated[str, Field(min_length=1)]
    weight: Annotated[float, Field(gt=0)]


class ShadowConfig(_Strict):
    """A copy of ``percent`` of the requests goes to ``model``; its answer is discarded and measured."""

    model: Annotated[str, Field(min_length=1)]
    percent: Annotated[float, Field(gt=0, le=100)]
    max_concurrent: Annotated[int, Field(ge=1)] = 16  # shadows in flight at once; past it a copy is skipped


class ReleaseConfig(_Strict):
    versions: Annotated[list[VersionConfig], Field(min_length=1)]
    # Who a caller is, first found wins: the body's `user`, the API key, the x-tokenway-session header.
    # A caller with none of them is placed at random on each request.
    sticky_by: Annotated[list[StickyBy], Field(min_length=1)] = ["user", "key", "session"]
    shadow: ShadowConfig | None = None

    @model_validator(mode="after")
    def _distinct_versions(self) -> ReleaseConfig:
        names = [v.name for v in self.versions]
        if len(set(names)) != len(names):
            raise ValueError(f"version names must differ: {names}")
        return self
