"""Provider implementations by name, imported only when a config uses them."""

from __future__ import annotations

import importlib
from typing import Any

# name -> "module:Class". Adding a backend is adding a module and a line here.
PROVIDERS: dict[str, str] = {
    "openai": "tokenway.providers.openai_compat:OpenAICompatProvider",
    "ollama": "tokenway.providers.ollama:OllamaProvider",
    "local": "tokenway.providers.local.provider:LocalProvider",
}


class UnknownProvider(ValueError):
    pass


def provider_class(name: str) -> Any:
    """The provider class registered as ``name``; ``UnknownProvider`` names the known ones."""
    try:
        target = PROVIDERS[name]
    except KeyError:
        raise UnknownProvider(f"unknown provider {name!r}; expected one of: {', '.join(sorted(PROVIDERS))}") from None
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)
