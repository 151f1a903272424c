"""OpenAI's embeddings request as Ollama's ``POST /api/embed``, and Ollama's answer back.

Ollama takes ``input`` as a text or a list of texts (no token arrays: those are a 400 naming
``input``) and answers ``{"embeddings": [[...], ...], "prompt_eval_count": n}`` with unit vectors;
``dimensions`` and ``encoding_format`` are done here, so any Ollama version serves them.
"""

from __future__ import annotations

from typing import Any

import orjson

from tokenway.embeddings.schema import items
from tokenway.errors import InvalidRequest, UpstreamError
from tokenway.providers.base import Call, Completion


def embed_request(call: Call, model: str, keep_alive: str | None) -> dict[str, Any]:
    """The ``/api/embed`` body for an ``embeddings`` call to Ollama's ``model``."""
    texts = items(call.body)
    if not all(isinstance(text, str) for text in texts):
        raise InvalidRequest("This model is served by Ollama, which embeds text: send 'input' as text, not token "
                             "arrays.", param="input", code="invalid_value")
    body: dict[str, Any] = {"model": model, "input": texts}
    if keep_alive:
        body["keep_alive"] = keep_alive
    return body


def embed_answer(raw: bytes, call: Call) -> Completion:
    """OpenAI's embeddings answer from Ollama's ``/api/embed`` body."""
    import numpy as np

    from tokenway.embeddings.vectors import answer

    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError("Ollama's embeddings answer is not JSON.") from None
    vectors = doc.get("embeddings") if isinstance(doc, dict) else None
    expected = len(items(call.body))
    if not isinstance(vectors, list) or len(vectors) != expected:
        raise UpstreamError(f"Ollama's embeddings answer has no list of {expected} embeddings.")
    try:
        matrix = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError):
        raise UpstreamError("Ollama's embeddings are not lists of numbers of one length.") from None
    if matrix.ndim != 2:
        raise UpstreamError("Ollama's embeddings are not lists of numbers of one length.")
    return answer(matrix, call.body, int(doc.get("prompt_eval_count") or 0))
