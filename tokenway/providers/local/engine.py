"""The protocol between the local provider and an inference engine (llama.cpp, transformers).

The provider owns the OpenAI side (parameter mapping, stop strings, chunks, usage); an engine
owns tokens: it applies the model's chat template, and decodes many sequences together,
yielding token pieces as they are produced. Engines run their compute off the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    top_k: int = 0  # 0: off
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit


@dataclass(slots=True)
class GenerationRequest:
    prompt_tokens: list[int]
    params: SamplingParams
    deadline: float | None = None  # time.monotonic() by which it must have been admitted


@dataclass(slots=True)
class TokenPiece:
    """One decoded token: its id and its text (may be '' for a partial UTF-8 sequence)."""

    token_id: int
    text: str
    finish_reason: str | None = None  # "stop" (EOS) or "length" on the last piece


@dataclass(slots=True)
class EngineLoad:
    """What an engine is doing right now (for tests, metrics and admission decisions)."""

    running: int  # sequences being decoded
    waiting: int  # requests queued for a slot
    slots: int
    kv_used: int  # KV-cache cells holding tokens
    kv_total: int


class Engine(Protocol):
    context_window: int

    async def start(self) -> None:
        """Load the model and warm it up (the first request must not be the slow one)."""

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        """Token ids of the conversation rendered with the model's own chat template."""
        ...

    def text_prompt(self, prompt: str) -> list[int]: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenPiece]:
        """Tokens as they are decoded; closing the iterator cancels the sequence and frees its slot."""
        ...

    async def aclose(self) -> None: ...
