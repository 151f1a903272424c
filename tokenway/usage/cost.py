"""Token estimates at admission and the price of a request, in integer nano-dollars."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenway.config import DeploymentConfig, Price
from tokenway.prices import list_price
from tokenway.protocol import Usage
from tokenway.providers.base import Call


def deployment_price(config: DeploymentConfig) -> Price:
    """The deployment's configured price; without one, the shipped list price of its model."""
    if "price" in config.model_fields_set:
        return config.price
    listed = list_price(config.model)
    if listed is None:
        return config.price
    return Price(input_per_1m=listed[0], output_per_1m=listed[1])


@dataclass(frozen=True, slots=True)
class Rates:
    """A price as integers, femto-dollars (1e-15 USD) per token, so that the same tokens always
    cost the same integer and budgets and the ledger add up exactly. Each deployment holds its
    own, made once (``Deployment.rates``)."""

    per_input: int
    per_output: int

    @classmethod
    def of(cls, price: Price) -> Rates:
        return cls(round(price.input_per_1m * 1_000_000_000), round(price.output_per_1m * 1_000_000_000))

    @classmethod
    def dearest(cls, rates: list[Rates]) -> Rates:
        """Rates no cheaper than any of ``rates`` for any tokens: a bound before the deployment is known."""
        return cls(max((r.per_input for r in rates), default=0), max((r.per_output for r in rates), default=0))

    def nanos(self, prompt_tokens: int, completion_tokens: int) -> int:
        """The cost in nano-dollars, rounded up."""
        return -(-(prompt_tokens * self.per_input + completion_tokens * self.per_output) // 1_000_000)

    def usage_nanos(self, usage: Usage | None) -> int:
        return 0 if usage is None else self.nanos(usage.prompt_tokens, usage.completion_tokens)


def estimate_prompt_tokens(call: Call) -> int:
    """Characters / 4 plus per-message framing: a cheap estimate, settled to the real count afterwards.
    The request's size check, which counts the characters anyway, usually sets it on the call first."""
    if call.prompt_estimate is None:
        call.prompt_estimate = tokens_for_chars(*prompt_size(call))
    return call.prompt_estimate


def prompt_size(call: Call) -> tuple[int, int | None]:
    """The prompt's characters (text parts only), and its number of chat messages (None for a
    completions prompt or an embeddings input)."""
    body = call.body
    if call.kind == "chat":
        messages = body.get("messages") or []
        chars = 0
        for message in messages:  # a plain loop: this runs on every request
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                chars += sum(len(part.get("text") or "") for part in content if isinstance(part, dict))
        return chars, len(messages)
    if call.kind == "embeddings":
        return input_chars(body.get("input")), None
    if call.kind == "responses":
        return responses_size(body)
    prompt = body.get("prompt")
    return (len(prompt) if isinstance(prompt, str) else sum(len(p) for p in prompt or [] if isinstance(p, str))), None


def responses_size(body: dict[str, Any]) -> tuple[int, int]:
    """A Responses request's characters (``instructions`` and the texts of ``input``'s items) and its
    number of items, each framed like a chat message."""
    instructions = body.get("instructions")
    chars = len(instructions) if isinstance(instructions, str) else 0
    items = body.get("input")
    if isinstance(items, str):
        return chars + len(items), 1 + bool(instructions)
    if not isinstance(items, list):
        return chars, bool(instructions)
    for item in items:
        if not isinstance(item, dict):
            continue
        for name in ("content", "output", "arguments"):
            value = item.get(name)
            if isinstance(value, str):
                chars += len(value)
            elif isinstance(value, list):
                chars += sum(len(part.get("text") or "") for part in value if isinstance(part, dict))
    return chars, len(items) + bool(instructions)


def input_chars(value: Any) -> int:
    """An embeddings ``input``'s characters: its texts', and 4 a token for a token array (the rate the
    estimate divides by, so an array is estimated at its own length)."""
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, list) or not value:
        return 0
    if isinstance(value[0], int):
        return 4 * len(value)
    return sum(input_chars(item) for item in value)


def tokens_for_chars(chars: int, messages: int | None) -> int:
    """The estimate for ``chars`` characters of prompt: a token per 4, plus framing per chat message
    (``messages``; None for a completions prompt)."""
    return -(-chars // 4) + (4 * messages + 3 if messages is not None else 1)
