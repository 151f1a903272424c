"""The semantic cache's embedder without the model: pooling, and the recent vectors it keeps."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from tokenway.cache.encoder import mean_pool
from tokenway.cache.semantic import Embedder


class Tokenizer:
    """One token per word, ids from the words' lengths; padded with zeros like a real tokenizer."""

    def __call__(self, texts: list[str], **_: Any) -> dict[str, np.ndarray]:
        words = [text.split() for text in texts]
        width = max(len(w) for w in words)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, text_words in enumerate(words):
            ids[row, : len(text_words)] = [len(word) for word in text_words]
            mask[row, : len(text_words)] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


class Forward:
    def __init__(self) -> None:
        self.texts = 0
        self.threads: set[str] = set()

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        self.texts += len(batch["input_ids"])
        self.threads.add(threading.current_thread().name)
        ids = batch["input_ids"].astype(np.float32)
        return np.stack([ids, np.ones_like(ids), ids * ids], axis=-1)  # (batch, tokens, 3)


def test_mean_pool_ignores_padding_and_returns_unit_vectors() -> None:
    hidden = np.array([[[3.0, 4.0], [9.0, 9.0]], [[1.0, 0.0], [0.0, 1.0]]], dtype=np.float32)
    mask = np.array([[1, 0], [1, 1]])
    pooled = mean_pool(hidden, mask)
    assert pooled.dtype == np.float32
    np.testing.assert_allclose(pooled, [[0.6, 0.8], [2**-0.5, 2**-0.5]], rtol=1e-6)


async def test_a_repeated_question_reuses_its_vector_without_the_model() -> None:
    forward = Forward()
    embedder = Embedder(Tokenizer(), forward, recent=2)
    try:
        first = await embedder.embed("How far  is the moon?")
        again = await embedder.embed(" How far is the\nmoon? ")  # the same after normalising white space
        assert again is first and forward.texts == 1
        assert forward.threads == {"tokenway-embed_0"}  # off the event loop
        with pytest.raises(ValueError):
            first[0] = 0  # shared between callers, so nobody may change it
        await embedder.embed("one")
        await embedder.embed("How far is the moon?")  # used again: now the most recent
        await embedder.embed("two")  # evicts "one", the least recently used of two
        assert forward.texts == 3
        await embedder.embed("How far is the moon?")
        assert forward.texts == 3
        await embedder.embed("one")
        assert forward.texts == 4
    finally:
        embedder.close()


def test_encode_pools_each_text_over_its_own_tokens() -> None:
    embedder = Embedder(Tokenizer(), Forward())
    try:
        batch = embedder.encode(["a bb", "ccc dddd eeeee"])
        np.testing.assert_allclose(batch[0], embedder.encode(["a bb"])[0], rtol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(batch, axis=1), [1.0, 1.0], rtol=1e-6)
    finally:
        embedder.close()
