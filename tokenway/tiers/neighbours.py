"""The ``neighbours`` scorer: a request scores what its nearest labelled prompts were labelled.

The user's sample file is JSON Lines, one ``{"prompt": "...", "label": "..."}`` per line, labels
``simple``/``small`` (0), ``medium`` (0.5), ``complex``/``large`` (1). Each prompt is embedded
once at start with the bundled MiniLM (``tokenway.cache.semantic.Embedder``); a request's score is
the similarity-weighted mean label of its ``k`` nearest samples, each text read to ``PREFIX_CHARS``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenway.cache.semantic import Embedder, normalise

LABEL_SCORES = {"simple": 0.0, "small": 0.0, "medium": 0.5, "complex": 1.0, "large": 1.0}
# The vote reads a prompt's first characters only: the ask is stated at its start, and the encode's cost
# grows with the text's length (benchmarks/tier_routing/RESULTS.md measures both).
PREFIX_CHARS = 160


class SampleError(ValueError):
    """A sample file that cannot be used; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Sample:
    prompt: str
    score: float


def read_samples(path: Path) -> list[Sample]:
    """The labelled prompts of a JSON Lines file (blank lines skipped)."""
    samples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt, label = row["prompt"], row["label"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SampleError(f"{path}:{number}: expected a JSON object with 'prompt' and 'label'") from None
        if not isinstance(prompt, str) or label not in LABEL_SCORES:
            raise SampleError(f"{path}:{number}: 'prompt' must be text and 'label' one of "
                              f"{', '.join(LABEL_SCORES)} (got {label!r})")
        samples.append(Sample(prompt, LABEL_SCORES[label]))
    if not samples:
        raise SampleError(f"{path}: no labelled prompts")
    return samples


class NeighbourScorer:
    """Scores text by the labels of its nearest samples. Built from already-embedded samples."""

    def __init__(self, embedder: Embedder, vectors: np.ndarray, scores: np.ndarray, k: int) -> None:
        self._embedder = embedder
        self._vectors = vectors  # (n, 384) unit rows
        self._scores = scores  # (n,)
        self._k = min(k, len(scores))

    @classmethod
    def build(cls, embedder: Embedder, samples: list[Sample], k: int) -> NeighbourScorer:
        """Embed every sample (blocking: call it from a thread at start)."""
        vectors = embedder.encode([normalise(sample.prompt[:PREFIX_CHARS]) for sample in samples])
        return cls(embedder, vectors, np.array([sample.score for sample in samples], dtype=np.float32), k)

    def score_vector(self, vector: np.ndarray) -> float:
        similarities = self._vectors @ vector
        nearest = np.argpartition(-similarities, self._k - 1)[: self._k]
        weights = np.clip(similarities[nearest], 1e-3, None)
        return float(np.dot(weights, self._scores[nearest]) / weights.sum())

    async def score(self, text: str) -> float:
        return self.score_vector(await self._embedder.embed(text[:PREFIX_CHARS]))
