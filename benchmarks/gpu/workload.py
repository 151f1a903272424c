"""The GPU benchmark's workload and result format, shared by its three phases.

Every phase gets the same requests: N chat conversations whose rendered prompt (chat template
included) is exactly ``input_tokens`` long, each one different (no shared prefix past the template,
so prefix caching gives no phase an edge), answered with ``output_tokens`` tokens, EOS ignored.
"""

from __future__ import annotations

import json
import random
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

WORDS = (
    "the quick brown fox jumps over lazy dog gateway model batch token stream client server "
    "request answer poem sea wind stars paris capital france hello today fine thank you write "
    "short many one step each protocol backends front speaks sits continuous decodes sequences"
).split()


@dataclass
class Workload:
    messages: list[list[dict[str, str]]]
    prompt_ids: list[list[int]]  # the same conversations, rendered with the folder's chat template


def build_workload(model_path: str, requests: int, input_tokens: int, seed: int = 0) -> Workload:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rng = random.Random(seed)

    def render(text: str) -> list[int]:
        chat = [{"role": "user", "content": text}]
        rendered = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        return list(tokenizer.encode(rendered, add_special_tokens=False))

    # Byte-level BPE splits on spaces, so a word's tokens don't depend on its neighbours: count each
    # word once, fill greedily, then check the rendered length and trim or pad by single characters.
    cost = {word: len(tokenizer.encode(" " + word, add_special_tokens=False)) for word in WORDS}
    overhead = len(render(""))
    messages, prompt_ids = [], []
    for index in range(requests):
        text = f"#{index}"
        budget = input_tokens - len(render(text))
        while budget > 0:
            word = rng.choice([w for w in WORDS if cost[w] <= budget] or ["x"])
            text += " " + word
            budget -= cost.get(word, 1)
        ids = render(text)
        while len(ids) != input_tokens and len(ids) > overhead:
            text = text[:-1] if len(ids) > input_tokens else text + " x"
            ids = render(text)
        messages.append([{"role": "user", "content": text}])
        prompt_ids.append(ids)
    return Workload(messages, prompt_ids)


@dataclass
class PhaseResult:
    phase: str
    requests: int
    ok: int
    prompt_tokens_mean: float
    completion_tokens: int
    wall_s: float
    output_tok_s: float
    ttft_p50_s: float | None = None
    ttft_p99_s: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        print(json.dumps(asdict(self)), flush=True)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]
