"""How hard a request looks, as a score from 0 (any small model will do) to 1 (needs the largest).

Pure functions over the request body: the features a request shows (``features``) and the
heuristic's weighing of them (``heuristic_score``). The weights were fitted by hand on the
labelled prompts of ``benchmarks/tier_routing`` (accuracy and cost there, with the command).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_CODE = re.compile(
    r"```|\bdef |\bclass |\bimport |#include|\bfunction\b|=>|\bSELECT\b|\bregex\b|\bsql\b|\bpython\b|\bjavascript\b"
    r"|\btypescript\b|\brust\b|\bgolang\b|\bjava\b|\bc\+\+|\bbash\b|\bcode\b|\bbug\b|\bcompile|\bstack trace\b"
    r"|\btraceback\b|\bsegfault\b|\brefactor|\bunit tests?\b|\bAPI\b|\bquery\b|\balgorithm|\bdeadlock"
    r"|\brace condition|\bmemory leak|\bkubernetes\b|\bdocker", re.IGNORECASE)
_MATH = re.compile(
    r"\d\s*[-+*/^=]\s*\d|\\frac|\\sum|\\int|\bsqrt\b|\bintegral\b|\bderivative\b|\bequations?\b|\bsolve\b"
    r"|\bprobability\b|\bmatrix\b|\beigen|\btheorem\b|\bprove\b|\bproof\b|\bexpected value\b|\bvariance\b"
    r"|\bcombinatori|\bpolynomial|\blogarithm|\bdifferential|\bconverge|\barea\b|\bperimeter\b|\bvolume\b"
    r"|\bslope\b|\bfactorial\b|\binterest\b|\baverage\b|\bmedian\b|\bfraction\b|\bpercent|\bcalculate\b"
    r"|\bspeed\b|\bhow many ways\b|\bformula\b", re.IGNORECASE)
_HARD = re.compile(
    r"\bprove\b|\bproof\b|\bderive\b|\binduction\b|\blagrange|\brigorous|\bimplement|\bdesign\b|\barchitecture"
    r"|\broot causes?\b|\btrade-?offs?\b|\bcritique\b|\bformal(ly)?\b|\bgame theory\b|\bnash\b|\bestimate\b"
    r"|\bplan\b|\bwork out\b|\bstrategy\b|\bfor concurrency\b", re.IGNORECASE)
_REASONING = re.compile(
    r"\bstep[- ]by[- ]step\b|\bexplain why\b|\bwhy does\b|\banaly[sz]|\bcompare\b|\btrade-?offs?\b|\bdesign\b"
    r"|\bplan\b|\bevaluate\b|\bpros and cons\b|\bstrateg|\barchitect|\bjustify|\bderive\b|\boptimi[sz]"
    r"|\bcritique\b|\bimplications?\b|\bconsequences?\b|\bassess|\bweigh\b|\bin depth\b|\bthorough"
    r"|\bmulti-step\b|\bfirst,.*then\b|\bhypothes|\broot cause|\bdebug|\bmigrat|\bscal(e|ing|able)\b",
    re.IGNORECASE)
_TASK = re.compile(
    r"\bexplain|\bdescribe\b|\bsummar|\btl;?dr\b|\brewrite\b|\bdraft\b|\bdifferences?\b|\bhow (does|do|can)\b"
    r"|\bwhy\b|\bextract\b|\bcondense\b|\bnotes\b|\bbullet|\bshorten\b|\bemail\b|\bletter\b|\bspeech\b"
    r"|\bwhat are the\b|\bshould i\b|\bhelp me\b|\bfix\b|\bwrite (a|an) (python|sql|bash|javascript|function|script"
    r"|query|regex|dockerfile|unit test)", re.IGNORECASE)
_ASKS = re.compile(r",|;|\band\b|\bthen\b|\bwith\b|\bincluding\b|\?", re.IGNORECASE)
_SIMPLE = re.compile(
    r"^\s*(hi|hello|hey|thanks|thank you|good (morning|night|evening)|what is the capital"
    r"|who (is|was|wrote|invented|painted|discovered|composed)|when (is|was|did)|how do you say|translate|define"
    r"|what does .{1,30} (mean|stand for)|spell|what time|what day|what is \d|what's \d|how many|is \d+ a)\b",
    re.IGNORECASE)

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
    markers = {match.group(0).lower() for match in _REASONING.finditer(last)}
    return Features(
        text=last, context_chars=context, turns=turns,
        code=_CODE.search(last) is not None, math=_MATH.search(last) is not None, reasoning=len(markers),
        task=_TASK.search(last) is not None, hard=_HARD.search(last) is not None, asks=len(_ASKS.findall(last)),
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
