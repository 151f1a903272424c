"""The ``prompts:`` config section and the pin a model or key writes (``name`` or ``name@3``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from tokenway.prompts.templates import check_pin

PromptPin = Annotated[str, AfterValidator(check_pin)]


class PromptsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # How often each process asks the store for prompt changes made elsewhere (other replicas, the CLI).
    refresh_s: Annotated[float, Field(gt=0)] = 0.5
