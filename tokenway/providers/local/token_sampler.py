"""Choosing a sequence's next token from its logits row, for the llama engine's decode thread.

llama.cpp's sampler chain (``llama_sampler_sample``) copies the whole vocabulary into a
candidate array on every call and takes ~0.5 ms per token here (49K-token vocabulary): 4 ms of
every 8-sequence step, on the decode thread while the other decode thread waits. The same
steps over the logits row with numpy take ~0.2 ms, and a greedy pick (an argmax) ~10 us.

The order of operations is llama.cpp's: logit bias, then top-k, top-p (on the probabilities at
temperature 1), temperature, and a draw from what is left. Greedy picks the first maximum.
"""

from __future__ import annotations

import numpy as np

from tokenway.providers.local.engine import SamplingParams


class TokenSampler:
    """One sequence's sampling state: its parameters and its own seeded random generator."""

    __slots__ = ("bias_ids", "bias_values", "rng", "temperature", "top_k", "top_p")

    def __init__(self, params: SamplingParams, n_vocab: int) -> None:
        self.temperature = params.temperature
        self.top_k = params.top_k
        self.top_p = params.top_p
        # Biases on ids the vocabulary lacks (50256, GPT-2's end of text, is a common one) do nothing.
        bias = {token: value for token, value in params.logit_bias.items() if 0 <= token < n_vocab}
        self.bias_ids = np.fromiter(bias, dtype=np.int64, count=len(bias))
        self.bias_values = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
        # No seed: fresh entropy. numpy takes non-negative seeds only; OpenAI's may be negative.
        self.rng = np.random.default_rng(None if params.seed is None else params.seed & (2**64 - 1))

    def sample(self, logits: np.ndarray) -> int:
        """The next token; ``logits`` (float32, one per vocabulary entry) is not modified."""
        if self.bias_ids.size:
            logits = logits.copy()
            logits[self.bias_ids] += self.bias_values
        if self.temperature <= 0.0:
            return int(logits.argmax())
        ids: np.ndarray | None = None
        if 0 < self.top_k < logits.size:
            ids = np.argpartition(logits, -self.top_k)[-self.top_k:]
            logits = logits[ids]
        if self.top_p < 1.0:
            order = np.argsort(-logits, kind="stable")
            ranked = logits[order]
            mass = np.cumsum(np.exp(ranked - ranked[0]))
            keep = int(np.searchsorted(mass, self.top_p * mass[-1])) + 1  # smallest set reaching top_p
            order = order[:keep]
            ids = order if ids is None else ids[order]
            logits = ranked[:keep]
        weights = logits - logits.max()
        weights *= np.float32(1.0 / self.temperature)
        np.exp(weights, out=weights)
        np.cumsum(weights, out=weights)
        pick = min(int(np.searchsorted(weights, self.rng.random() * weights[-1], side="right")), weights.size - 1)
        return pick if ids is None else int(ids[pick])
