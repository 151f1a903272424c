"""OpenAI request parameters mapped to an engine's ``SamplingParams`` (engine-agnostic).

What the local engines cannot honour (logprobs, tools, penalties...) is ignored, never
silently: the names are listed in the ``x-tokenway-ignored-params`` response header.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from tokenway.errors import InvalidRequest
from tokenway.providers.base import Call
from tokenway.providers.local.engine import SamplingParams

IGNORED_HEADER = b"x-tokenway-ignored-params"

# Parameters that change the answer when set to anything but their neutral value.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
}

# Parameters that only some engines implement: which ones an engine does is its
# ``sampling_features`` attribute.
OPTIONAL_FEATURES = ("top_k", "logit_bias")


@dataclass(slots=True)
class Plan:
    """How to answer one call: per-choice sampling, stop strings and what was ignored."""

    params: SamplingParams
    stops: list[str]
    n: int
    ignored: list[str]
    deadline: float | None  # time.monotonic() by which a request must hold a slot

    def for_choice(self, index: int, max_tokens: int) -> SamplingParams:
        seed = None if self.params.seed is None else self.params.seed + index
        return replace(self.params, seed=seed, max_tokens=max_tokens)


def plan(call: Call, *, features: frozenset[str], queue_timeout_s: float, remaining_s: float | None) -> Plan:
    body = call.body
    ignored = [name for name, neutral in _NEUTRAL.items() if name in body and body[name] not in neutral]
    temperature = _number(body, "temperature", 1.0)
    top_p = _number(body, "top_p", 1.0)
    params = SamplingParams(
        max_tokens=call.max_tokens or 0,  # 0: whatever room the context window leaves
        temperature=temperature,
        top_p=top_p,
        seed=body.get("seed"),
        ignore_eos=bool(body.get("ignore_eos")),
    )
    for name in OPTIONAL_FEATURES:
        if body.get(name) in (None, 0, {}):
            continue
        if name not in features:
            ignored.append(name)
        elif name == "top_k":
            params.top_k = _top_k(body["top_k"])
        else:
            params.logit_bias = _logit_bias(body["logit_bias"])
    wait = queue_timeout_s if remaining_s is None else max(0.0, min(queue_timeout_s, remaining_s))
    return Plan(
        params=params, stops=_stops(body.get("stop")), n=int(body.get("n") or 1), ignored=ignored,
        deadline=time.monotonic() + wait,
    )


def completion_budget(prompt_tokens: int, max_tokens: int, context_window: int, param: str) -> int:
    """``max_tokens`` for one prompt, or ``InvalidRequest`` when they do not fit the window."""
    requested = prompt_tokens + max(max_tokens, 1)
    if requested > context_window:
        asked = f"{max_tokens} for the completion" if max_tokens else "at least 1 for the completion"
        raise InvalidRequest(
            f"This model's maximum context length is {context_window} tokens. However, you requested "
            f"{requested} tokens ({prompt_tokens} in the prompt, {asked}). Please reduce the length of "
            f"the {param} or max_tokens.",
            param=param, code="context_length_exceeded",
        )
    return max_tokens or context_window - prompt_tokens


def _number(body: dict[str, Any], name: str, default: float) -> float:
    value = body.get(name)
    return default if value is None else float(value)


def _stops(stop: Any) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if not all(isinstance(s, str) for s in stops):
        raise InvalidRequest("'stop' must be a string or a list of strings.", param="stop")
    return stops


def _top_k(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidRequest(f"'top_k' must be a non-negative integer (got {value!r}).", param="top_k")
    return value


def _logit_bias(value: Any) -> dict[int, float]:
    try:
        return {int(token): float(bias) for token, bias in dict(value).items()}
    except (TypeError, ValueError):
        raise InvalidRequest(
            "'logit_bias' must map token ids to numbers, like {\"50256\": -100}.", param="logit_bias"
        ) from None
