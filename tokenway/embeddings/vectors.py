"""OpenAI's embeddings answer, built from a matrix of vectors: shortened (``dimensions``), as floats or
base64, with usage. The local model and the Ollama translation both answer through here; an
OpenAI-compatible backend's answer is relayed as it came."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson

from tokenway.errors import InvalidRequest
from tokenway.protocol import Usage
from tokenway.providers.base import Completion


def check_dimensions(dimensions: int | None, width: int) -> None:
    """A 400 naming ``dimensions`` when it asks for more than the model's ``width``."""
    if dimensions is not None and dimensions > width:
        raise InvalidRequest(f"'dimensions' is {dimensions}; this model's embeddings have {width}. Send at most "
                             f"{width}.", param="dimensions", code="invalid_value")


def shorten(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Each row's first ``dimensions`` values, made unit length again: what OpenAI's v3 models do with
    ``dimensions`` (their vectors are trained so that a prefix is still a good embedding). None, or
    the full width: the vectors as they are. Wider than the model: a 400 naming ``dimensions``."""
    width = vectors.shape[1]
    check_dimensions(dimensions, width)
    if dimensions is None or dimensions == width:
        return vectors
    cut = vectors[:, :dimensions]
    norms = np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)
    return (cut / norms).astype(np.float32, copy=False)


def answer(vectors: np.ndarray, body: dict[str, Any], prompt_tokens: int) -> Completion:
    """The ``Completion`` for ``vectors`` (one row per input, in order) as the request ``body`` asked:
    its ``dimensions`` and ``encoding_format``; usage counts the input's tokens (there is no output)."""
    vectors = shorten(vectors, body.get("dimensions"))
    if body.get("encoding_format") == "base64":
        # OpenAI's base64 is the float32 values' bytes, little-endian, which is what the SDK decodes.
        little = vectors.astype("<f4", copy=False)
        data: list[Any] = [base64.b64encode(row.tobytes()).decode() for row in little]
    else:
        data = list(vectors.astype(np.float32, copy=False))
    doc = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(data)],
        "model": body["model"],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return Completion(body=orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), usage=Usage(prompt_tokens))
