"""Blocked terms: whole words or phrases, case-insensitively, in one compiled pattern."""

from __future__ import annotations

import re
from collections.abc import Sequence

from tokenway.guards.base import Span

LABEL = "[REDACTED]"


class TermsFinder:
    """Finds any of ``terms`` standing as whole words ("bar" matches "Bar." but not "barn").

    Boundaries are "no word character on either side" rather than ``\\b``, so that terms starting or
    ending with punctuation (``c++``, ``.env``) match too. Longer terms are tried first, so a phrase
    wins over a word it contains.
    """

    def __init__(self, terms: Sequence[str]) -> None:
        ordered = sorted({term.strip() for term in terms if term.strip()}, key=len, reverse=True)
        self.longest = max((len(term) for term in ordered), default=0)
        alternatives = "|".join(re.escape(term).replace(r"\ ", r"\s+") for term in ordered)
        self._pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    def find(self, text: str) -> list[Span]:
        return [Span(m.start(), m.end(), "term", LABEL) for m in self._pattern.finditer(text)]
