"""List prices of common cloud models, USD per 1M tokens (input, output), as published in 2025.

Used when a deployment's config sets no ``price``; a ``price`` in the config always wins.
Looked up by the upstream model name, then the public one, with a dated suffix stripped
(``gpt-4o-2024-08-06`` prices as ``gpt-4o``). ``SOURCES`` names the provider's page each price was
checked against; the others are unverified (docs/cost.md, "Sources", says what agrees with them).
"""

from __future__ import annotations

import re

PRICES: dict[str, tuple[float, float]] = {
    # OpenAI
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o1": (15.00, 60.00),
    "o1-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "text-embedding-3-small": (0.02, 0.0),
    "text-embedding-3-large": (0.13, 0.0),
    # Anthropic
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-haiku": (0.25, 1.25),
    "claude-opus-4": (15.00, 75.00),
    # Google
    "gemini-1.5-pro": (1.25, 5.00),
    "gemini-1.5-flash": (0.075, 0.30),
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-2.5-pro": (1.25, 10.00),
    "gemini-2.5-flash": (0.30, 2.50),
    # Mistral
    "mistral-large-latest": (2.00, 6.00),
    "mistral-small-latest": (0.20, 0.60),
    # DeepSeek: one price for both since 2025-09-05 (cache-miss input)
    "deepseek-chat": (0.56, 1.68),
    "deepseek-reasoner": (0.56, 1.68),
}

_ANTHROPIC = ("https://docs.anthropic.com/en/docs/about-claude/pricing", "undated; read 2026-12-07")
_DEEPSEEK = ("https://api-docs.deepseek.com/quick_start/pricing", "2025-09-05")

# The provider's own pricing page each price was checked against, and the date the page gives.
SOURCES: dict[str, tuple[str, str]] = {
    "claude-3-5-sonnet": _ANTHROPIC, "claude-3-7-sonnet": _ANTHROPIC, "claude-sonnet-4": _ANTHROPIC,
    "claude-3-5-haiku": _ANTHROPIC, "claude-3-haiku": _ANTHROPIC, "claude-opus-4": _ANTHROPIC,
    "deepseek-chat": _DEEPSEEK, "deepseek-reasoner": _DEEPSEEK,
}

_DATED = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


def list_price(model: str | None) -> tuple[float, float] | None:
    """The shipped (input, output) price of ``model``, or None when it is not in the table."""
    if not model:
        return None
    name = model.rsplit("/", 1)[-1].lower()  # "openai/gpt-4o" and "gpt-4o" price the same
    return PRICES.get(name) or PRICES.get(_DATED.sub("", name))
