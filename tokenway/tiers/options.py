"""The YAML of small-model routing: ``tiers:``, a list of routers, each a public model name.

```yaml
tiers:
  - name: auto                 # what clients ask for
    scorer: heuristic          # or neighbours (with samples:)
    tiers:
      - {name: small, model: gpt-4o-mini, up_to: 0.35}   # scores below 0.35
      - {name: large, model: gpt-4o}                     # the rest
    escalate_on: [empty, refusal, invalid_json]
```

Kept apart from ``config.py`` so the tiers package owns its knobs; ``config.py`` hangs the list on
``GatewayConfig`` and checks that every tier names a configured model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Check = Literal["empty", "refusal", "invalid_json"]
ScorerName = Literal["heuristic", "neighbours"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TierConfig(_Strict):
    """One step of the ladder: a configured model, and the score below which a request stops here."""

    model: Annotated[str, Field(min_length=1)]
    name: str | None = None  # what the override header and the response header call it; default: the model
    up_to: Annotated[float, Field(gt=0, le=1)] | None = None  # the last tier takes every score, so it has none

    @model_validator(mode="after")
    def _named(self) -> TierConfig:
        self.name = self.name or self.model
        return self

    @property
    def label(self) -> str:
        return self.name or self.model


class TierRouterConfig(_Strict):
    name: Annotated[str, Field(min_length=1)]  # the public model name clients send
    tiers: Annotated[list[TierConfig], Field(min_length=2)]
    scorer: ScorerName = "heuristic"
    # neighbours: a JSON Lines file of {"prompt": ..., "label": simple|medium|complex (or small|large)}
    samples: Path | None = None
    neighbours: Annotated[int, Field(ge=1, le=50)] = 7  # how many labelled prompts vote
    escalate_on: list[Check] = ["empty", "refusal", "invalid_json"]

    @field_validator("samples")
    @classmethod
    def _samples_readable(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"the samples file {str(path)!r} does not exist (a JSON Lines file of labelled prompts)")
        return path

    @model_validator(mode="after")
    def _ladder(self) -> TierRouterConfig:
        if self.scorer == "neighbours" and self.samples is None:
            raise ValueError("scorer 'neighbours' needs 'samples': a JSON Lines file of labelled prompts")
        *steps, last = self.tiers
        if last.up_to is not None:
            raise ValueError(f"the last tier ({last.label}) takes every score left: remove its 'up_to'")
        bounds: list[float] = []
        for tier in steps:
            if tier.up_to is None:
                raise ValueError(f"tier {tier.label!r} needs 'up_to' (the score below which requests stay on it)")
            if bounds and tier.up_to <= bounds[-1]:
                raise ValueError(f"tier {tier.label!r}: 'up_to' must grow from one tier to the next")
            bounds.append(tier.up_to)
        labels = [tier.label for tier in self.tiers]
        if len(set(labels)) != len(labels):
            raise ValueError(f"tier names must differ: {labels}")
        return self

    def models(self) -> list[str]:
        """The models this router may send a request to (access holds the budget at the dearest of them)."""
        return [tier.model for tier in self.tiers]
