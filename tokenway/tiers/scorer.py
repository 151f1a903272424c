"""How hard a request looks, as a score from 0 (any small model will do) to 1 (needs the largest).

Pure functions over the request body: the features a request shows (``features``) and the
heuristic's weighing of them (``heuristic_score``). The weights were fitted by hand on the
labelled prompts of ``benchmarks/tier_routing`` (accuracy and cost there, with the command).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Markers:
    """Signs of one kind of work in a text: whole words, word beginnings ("analy" for analyse and
    analysis; several words allowed), and strings found anywhere (punctuation included)."""

    words: frozenset[str] = frozenset()
    stems: tuple[str, ...] = ()
    anywhere: tuple[str, ...] = ()

    def found(self, text: Text) -> list[str]:
        """The markers in ``text``, each once."""
        hits = [word for word in self.words if word in text.words]
        hits += [stem for stem in self.stems if " " + stem in text.spaced]
        hits += [mark for mark in self.anywhere if mark in text.lower]
        return hits


CODE = Markers(
    frozenset({"def", "class", "import", "function", "select", "regex", "sql", "python", "javascript", "typescript",
               "rust", "golang", "java", "bash", "code", "bug", "traceback", "segfault", "api", "query",
               "deadlock", "kubernetes", "dockerfile", "docker", "json", "css", "html", "git"}),
    ("compil", "refactor", "unit test", "stack trace", "algorithm", "race condition", "memory leak"),
    ("```", "#include", "=>", "c++", "();", "{}"))
MATH = Markers(
    frozenset({"sqrt", "integral", "derivative", "equation", "equations", "solve", "probability", "matrix", "theorem",
               "prove", "proof", "variance", "area", "perimeter", "volume", "slope", "factorial", "interest",
               "average", "median", "fraction", "calculate", "speed", "formula"}),
    ("eigen", "expected value", "combinatori", "polynomial", "logarithm", "differential", "converge", "percent",
     "how many ways"),
    ("\\frac", "\\sum", "\\int"))
HARD = Markers(
    frozenset({"prove", "proof", "derive", "induction", "design", "critique", "formal", "formally", "nash",
               "estimate", "plan", "strategy", "trade-off", "trade-offs", "tradeoffs"}),
    ("lagrange", "rigorous", "implement", "architecture", "root cause", "game theory", "work out"))
REASONING = Markers(
    frozenset({"compare", "design", "plan", "evaluate", "derive", "critique", "implication", "implications",
               "consequence", "consequences", "weigh", "trade-off", "trade-offs", "scale", "scaling", "scalable"}),
    ("step by step", "step-by-step", "explain why", "why does", "analy", "pros and cons", "strateg", "architect",
     "justify", "optimi", "assess", "in depth", "thorough", "multi-step", "hypothes", "root cause", "debug",
     "migrat"))
TASK = Markers(
    frozenset({"describe", "rewrite", "draft", "difference", "differences", "why", "extract", "condense", "notes",
               "shorten", "email", "letter", "speech", "fix", "tldr"}),
    ("explain", "summar", "bullet", "how does", "how do", "how can", "what are the", "should i", "help me",
     "write a python", "write a sql", "write a bash", "write a javascript", "write a function", "write a script",
     "write a query", "write a regex", "write a dockerfile", "write a unit test"),
    ("tl;dr",))
ASK_WORDS = ("and", "then", "with", "including")  # each, like a comma, semicolon or "?", asks one thing more
_ARITHMETIC = re.compile(r"\d\s*[-+*/^=]\s*\d")
_NOT_WORD = re.compile(r"[^a-z0-9+#'\-]+")
_SIMPLE = re.compile(
    r"^\s*(hi|hello|hey|thanks|thank you|good (morning|night|evening)|what is the capital"
    r"|who (is|was|wrote|invented|painted|discovered|composed)|when (is|was|did)|how do you say|translate|define"
    r"|what does .{1,30} (mean|stand for)|spell|what time|what day|what is \d|what's \d|how many|is \d+ a)\b",
    re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Text:
    """A text made ready for the markers: lower case, its words, and its words between single spaces."""

    lower: str
    tokens: list[str]
    words: frozenset[str]
    spaced: str  # " word word ... ": a word beginning is " " + stem

    @classmethod
    def of(cls, text: str) -> Text:
        lower = text.lower()
        tokens = _NOT_WORD.sub(" ", lower).split()
        return cls(lower, tokens, frozenset(tokens), " " + " ".join(tokens) + " ")


# Weights of the heuristic, and the lengths at which length stops adding to the score.
LENGTH_FULL_CHARS = 600  # the last user turn's length at which length alone gives LENGTH_WEIGHT
CONTEXT_FULL_CHARS = 12000  # the whole conversation's
LENGTH_WEIGHT = 0.3
CONTEXT_WEIGHT = 0.1
TASK_WEIGHT = 0.2  # a task beyond a one-line answer: explain, summarise, draft, fix ...
CODE_WEIGHT = 0.25
MATH_WEIGHT = 0.25
REASONING_WEIGHT = 0.15  # per distinct marker, up to three
HARD_WEIGHT = 0.2  # asks for a proof, a design, an implementation, a plan
ASK_WEIGHT = 0.03  # per clause or list item asked for, up to six
TOOLS_WEIGHT = 0.2
DEPTH_WEIGHT = 0.06  # per user turn after the first, up to four: a follow-up carries the conversation's weight
SIMPLE_DISCOUNT = 0.2  # a greeting or a one-fact question


@dataclass(frozen=True, slots=True)
class Features:
    """What the scorer looks at in one request."""

    text: str  # the last user turn (the prompt, for completions)
    context_chars: int  # every message's text together
    turns: int  # user turns in the conversation
    code: bool
    math: bool
    reasoning: int  # distinct reasoning markers in the last user turn
    task: bool  # asks for more than a one-line answer (explain, summarise, draft, fix ...)
    hard: bool  # asks for a proof, a design, an implementation, a plan
    asks: int  # clauses and list items in the last user turn (commas, "and", "then" ...)
    tools: bool  # tools declared, or tool results in the conversation
    simple: bool  # opens like a greeting or a one-fact question


def features(body: dict[str, Any]) -> Features:
    """The features of a chat or completions request body."""
    messages = body.get("messages")
    if isinstance(messages, list):
        texts = [(m.get("role"), _text(m.get("content"))) for m in messages if isinstance(m, dict)]
        users = [text for role, text in texts if role == "user"]
        last = users[-1] if users else (texts[-1][1] if texts else "")
        context = sum(len(text) for _, text in texts)
        tool_turns = any(role == "tool" for role, _ in texts)
        turns = len(users)
    else:
        prompt = body.get("prompt")
        last = prompt if isinstance(prompt, str) else _text(prompt)
        context, tool_turns, turns = len(last), False, 1
    text = Text.of(last)
    asks = sum(text.lower.count(mark) for mark in ",;?") + sum(text.tokens.count(word) for word in ASK_WORDS)
    return Features(
        text=last, context_chars=context, turns=turns,
        code=bool(CODE.found(text)), math=bool(MATH.found(text)) or _ARITHMETIC.search(last) is not None,
        reasoning=len(REASONING.found(text)), task=bool(TASK.found(text)), hard=bool(HARD.found(text)), asks=asks,
        tools=bool(body.get("tools") or body.get("functions")) or tool_turns,
        simple=_SIMPLE.search(last) is not None,
    )


def heuristic_score(found: Features) -> float:
    """The features weighed into a score in [0, 1]."""
    score = LENGTH_WEIGHT * min(1.0, len(found.text) / LENGTH_FULL_CHARS)
    score += CONTEXT_WEIGHT * min(1.0, found.context_chars / CONTEXT_FULL_CHARS)
    score += TASK_WEIGHT * found.task + HARD_WEIGHT * found.hard + CODE_WEIGHT * found.code + MATH_WEIGHT * found.math
    score += TOOLS_WEIGHT * found.tools + REASONING_WEIGHT * min(3, found.reasoning) + ASK_WEIGHT * min(6, found.asks)
    score += DEPTH_WEIGHT * min(4, max(0, found.turns - 1))
    if found.simple:
        score -= SIMPLE_DISCOUNT
    return max(0.0, min(1.0, score))


def score_request(body: dict[str, Any]) -> float:
    """The heuristic score of a request body."""
    return heuristic_score(features(body))


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict)
                        and isinstance(part.get("text"), str))
    return ""
