"""Provider implementations by name, imported only when a config uses them."""

from __future__ import annotations

import importlib
from typing import Any

# name -> "module:Class", or the class itself when registered from code. Adding a backend is
# adding a module and a line here.
PROVIDERS: dict[str, str | type[Any]] = {
    "openai": "tokenway.providers.openai_compat:OpenAICompatProvider",
    "ollama": "tokenway.providers.ollama:OllamaProvider",
    "local": "tokenway.providers.local.provider:LocalProvider",
    "local-embed": "tokenway.providers.local_embed:LocalEmbedProvider",
}


class UnknownProvider(ValueError):
    pass


def register_provider(name: str, cls: type[Any]) -> None:
    """Let configs say ``provider: <name>`` for ``cls`` (e.g. a test double); call before loading one.

    ``cls`` follows ``tokenway.providers.base.Provider``: an ``Options`` class attribute and a
    constructor taking ``(deployment, options, resources)``. A name already taken by another
    provider is refused, so a plugin cannot silently replace a built-in one.
    """
    known = PROVIDERS.get(name)
    if known is not None and known is not cls:
        raise ValueError(f"provider {name!r} is already registered ({known!r}); pick another name")
    PROVIDERS[name] = cls


def provider_class(name: str) -> Any:
    """The provider class registered as ``name``; ``UnknownProvider`` names the known ones."""
    try:
        target = PROVIDERS[name]
    except KeyError:
        raise UnknownProvider(f"unknown provider {name!r}; expected one of: {', '.join(sorted(PROVIDERS))}") from None
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)
