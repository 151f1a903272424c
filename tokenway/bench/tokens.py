"""Client-side token counting: the fallback when the server reports no usage, and the second
opinion the audit compares server usage against."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from functools import lru_cache

# Roughly how GPT-style BPE splits English: a word with its leading space, a run of digits,
# or one punctuation mark. Long words are split every ~6 characters.
_PIECES = re.compile(r" ?[A-Za-z]+| ?\d{1,3}| ?[^\sA-Za-z\d]|\s+")


def _heuristic(text: str) -> int:
    n = 0
    for m in _PIECES.finditer(text):
        piece = m.group().strip()
        if not piece:
            continue
        n += max(1, (len(piece) + 5) // 6) if piece.isalpha() else 1
    return n


@lru_cache(maxsize=1)
def counter() -> tuple[str, Callable[[str], int]]:
    """Return (method name, count function).

    With ``TOKENWAY_BENCH_TOKENIZER`` naming a local ``tokenizer.json`` (and the ``tokenizers``
    package installed) that tokenizer counts; otherwise the heuristic does. Nothing is ever
    downloaded: tokenizers that fetch their vocabulary at first use are deliberately not used.
    """
    path = os.environ.get("TOKENWAY_BENCH_TOKENIZER")
    if path:
        try:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(path)
            return f"tokenizer:{os.path.basename(path)}", lambda s: len(tokenizer.encode(s).ids)
        except Exception:
            pass  # a missing package or file: fall back, and the report says which method counted
    return "estimate:regex-heuristic", _heuristic


def count_tokens(text: str) -> int:
    """Count tokens in `text` with the best client-side method available."""
    return counter()[1](text)


def method() -> str:
    """Name of the client-side counting method, reported next to the numbers it produced."""
    return counter()[0]
