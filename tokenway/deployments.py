"""The live side of the config: each deployment with its provider and in-flight count."""

from __future__ import annotations

from dataclasses import dataclass

from tokenway.config import DeploymentConfig
from tokenway.errors import ModelNotFound
from tokenway.providers.base import Provider


@dataclass(eq=False, slots=True)
class Deployment:
    config: DeploymentConfig
    provider: Provider
    in_flight: int = 0

    @property
    def name(self) -> str:
        return self.config.name or ""

    @property
    def full(self) -> bool:
        limit = self.config.max_concurrency
        return limit is not None and self.in_flight >= limit


class ModelTable:
    """Public model name -> its deployments, in config order."""

    def __init__(self, models: dict[str, list[Deployment]]) -> None:
        self._models = models

    def lookup(self, name: str) -> list[Deployment]:
        try:
            return self._models[name]
        except KeyError:
            known = ", ".join(sorted(self._models)) or "(none configured)"
            raise ModelNotFound(
                f"The model '{name}' does not exist on this gateway. Known models: {known}.", param="model"
            ) from None

    def names(self) -> list[str]:
        return list(self._models)

    def all(self) -> list[Deployment]:
        return [d for deployments in self._models.values() for d in deployments]
