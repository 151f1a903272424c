"""What every guard shares: a span found in text, the finders that find spans, the block error,
and ``apply``, which runs text guards over one string with their actions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from tokenway.errors import InvalidRequest
from tokenway.guards.options import Action

Stage = str  # "input" or "output"
Report = Callable[[str, Stage, Action, Counter[str]], None]  # (guard, stage, action, kinds counted)


class Span(NamedTuple):
    """One match: ``text[start:end]`` is of ``kind`` (``email``, ``card``, ``term``...) and is written
    ``label`` when masked."""

    start: int
    end: int
    kind: str
    label: str


class Finder(Protocol):
    """Finds the spans of one guard in a text, in order, without overlaps."""

    def find(self, text: str) -> list[Span]: ...


@dataclass(frozen=True, slots=True)
class TextGuard:
    """A guard that finds spans in text (PII, blocked terms) and what to do when it finds some."""

    name: str  # the metric and log label: "pii", "blocked_terms"
    action: Action
    finder: Finder


class GuardBlocked(InvalidRequest):
    """A guard with ``action: block`` matched: 400 ``guard_blocked``, naming the guard and what it found."""

    code = "guard_blocked"

    def __init__(self, guard: str, stage: Stage, kinds: Sequence[str], param: str | None = None) -> None:
        what = "request" if stage == "input" else "answer"
        found = ", ".join(sorted(set(kinds)))
        super().__init__(
            f"The {what} was blocked by the gateway's '{guard}' guard (found: {found}). "
            f"Remove it from the {'request' if stage == 'input' else 'prompt'} or ask the gateway's operator.",
            param=param,
        )
        self.guard = guard
        self.stage = stage


def masked(text: str, spans: Sequence[Span]) -> str:
    """``text`` with every span replaced by its label (spans in order, not overlapping)."""
    parts = []
    at = 0
    for span in spans:
        parts.append(text[at:span.start])
        parts.append(span.label)
        at = span.end
    parts.append(text[at:])
    return "".join(parts)


def apply(text: str, guards: Sequence[TextGuard], stage: Stage, report: Report, param: str | None = None) -> str:
    """Run ``guards`` over ``text`` in order: raise ``GuardBlocked`` for a blocking match, report every
    action, and return the text with masked spans replaced (the same object when nothing was masked)."""
    for guard in guards:
        spans = guard.finder.find(text)
        if not spans:
            continue
        kinds = Counter(span.kind for span in spans)
        report(guard.name, stage, guard.action, kinds)
        if guard.action == "block":
            raise GuardBlocked(guard.name, stage, list(kinds), param)
        if guard.action == "mask":
            text = masked(text, spans)
    return text
