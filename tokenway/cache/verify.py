"""Does a semantically close cached question really ask the same thing? Cheap, explainable checks.

Sentence embeddings are nearly blind to the few tokens that flip an answer: "10 miles" vs
"100 miles", "with food" vs "without food", "Is Python faster than Java?" vs the reverse all
score above 0.9 with MiniLM. A neighbour is served only if, besides being close, it has:

- the same numbers (digits and number words, as a multiset; "one" is left out, as in
  "which one");
- the same count of negations (not, n't, no, never, without, ...);
- the same names (capitalised words that are not ordinary words, acronyms, tokens with digits);
- no antonym swapped in (faster/slower, before/after, buy/sell, ...);
- the same word after each directional word (than, vs, from, into, before, after...), so
  swapped arguments ("A faster than B" vs "B faster than A") are caught;
- not just one content word replaced by another (a minimal pair: "capital of Spain" vs
  "capital of France" written in lower case), which is how most near-misses look, while real
  paraphrases reword more than one word.

Each check names itself, so the reason for a rejection can be logged and measured.
"""

from __future__ import annotations

import difflib
import re

_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*|[.?!:;]")
_CLITIC = re.compile(r"'(?:s|m|re|ve|ll|d)$")
_END = frozenset(".?!:;")
_NUMBER_WORDS = {
    "zero": "0", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14",
    "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19", "twenty": "20",
    "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90",
    "hundred": "100", "thousand": "1000", "million": "1e6", "billion": "1e9", "dozen": "12", "half": "0.5",
    "first": "#1", "second": "#2", "third": "#3", "fourth": "#4", "fifth": "#5", "last": "#-1",
    "once": "x1", "twice": "x2", "double": "x2", "triple": "x3",
}
_NEGATIONS = {"not", "no", "never", "without", "none", "nobody", "nothing", "neither", "nor", "cannot", "nowhere",
              "non", "lack", "lacking"}
_DIRECTIONAL = {"than", "vs", "versus", "from", "into", "before", "after", "against", "over", "beats"}
_ANTONYMS = [
    ("faster", "slower"), ("fast", "slow"), ("before", "after"), ("more", "less"), ("more", "fewer"),
    ("increase", "decrease"), ("increases", "decreases"), ("raise", "lower"), ("higher", "lower"), ("high", "low"),
    ("maximum", "minimum"), ("max", "min"), ("largest", "smallest"), ("biggest", "smallest"), ("larger", "smaller"),
    ("bigger", "smaller"), ("big", "small"), ("large", "small"), ("longest", "shortest"), ("longer", "shorter"),
    ("long", "short"), ("buy", "sell"), ("buying", "selling"), ("import", "export"), ("above", "below"),
    ("hot", "cold"), ("hotter", "colder"), ("warm", "cool"), ("first", "last"), ("cheap", "expensive"),
    ("cheapest", "expensive"), ("cheaper", "expensive"), ("best", "worst"), ("better", "worse"), ("good", "bad"),
    ("safe", "dangerous"), ("safe", "unsafe"), ("legal", "illegal"), ("start", "stop"), ("start", "end"),
    ("open", "close"), ("enable", "disable"), ("add", "remove"), ("add", "delete"), ("install", "uninstall"),
    ("encrypt", "decrypt"), ("encode", "decode"), ("upload", "download"), ("push", "pull"), ("win", "lose"),
    ("gain", "lose"), ("north", "south"), ("east", "west"), ("left", "right"),
    ("inside", "outside"), ("true", "false"), ("old", "new"), ("oldest", "newest"), ("older", "younger"),
    ("men", "women"), ("man", "woman"), ("male", "female"), ("boys", "girls"), ("morning", "evening"),
    ("day", "night"), ("summer", "winter"), ("spring", "autumn"), ("wet", "dry"), ("light", "dark"),
    ("heavy", "light"), ("easy", "hard"), ("easiest", "hardest"), ("positive", "negative"), ("rich", "poor"),
    ("sweet", "sour"), ("early", "late"), ("earlier", "later"), ("yesterday", "tomorrow"), ("past", "future"),
    ("under", "over"), ("minimum", "max"), ("min", "maximum"), ("celsius", "fahrenheit"), ("km", "miles"),
    ("kg", "lbs"), ("kilograms", "pounds"), ("meters", "feet"), ("liters", "gallons"), ("inches", "cm"),
]
_OPPOSITE: dict[str, set[str]] = {}
for _a, _b in _ANTONYMS:
    _OPPOSITE.setdefault(_a, set()).add(_b)
    _OPPOSITE.setdefault(_b, set()).add(_a)
# Function words: not content, never names even when capitalised at the start of a question.
_STOP = set("""
a an the and or but if then so of to in on at by for with about as into from up down out over under is am are was
were be been being do does did doing have has had having can could will would shall should may might must i me my
mine we us our you your he him his she her it its they them their this that these those what which who whom whose
when where why how there here some any all each every both few many much very just also too again once than such
own same other another get gets got getting make makes made let lets please tell explain give show me way ways
really actually possible okay ok hi hello hey thanks thank whats what's hows how's anyone someone something
""".split())


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text)


def _norm(token: str) -> str:
    word = token.lower()
    if word.endswith("n't"):
        return "not"
    if word[0].isdigit():
        return word.replace(",", "")
    return _CLITIC.sub("", word)  # France's -> france, I'm -> i


def _numbers(words: list[str]) -> list[str]:
    out = []
    for word in words:
        if word[0].isdigit():
            out.append(word.rstrip(".").replace(",", ""))
        elif word in _NUMBER_WORDS:
            out.append(_NUMBER_WORDS[word])
    return sorted(out)


def _negations(words: list[str]) -> int:
    return sum(1 for w in words if w in _NEGATIONS)


def _names(tokens: list[str]) -> set[str]:
    """Capitalised words, acronyms and tokens with digits; a sentence's first word only if an acronym
    (imperatives like "Define" or "Name" open questions, and names there are caught by the other text)."""
    names = set()
    initial = True
    for token in tokens:
        if token in _END:
            initial = True
            continue
        first, initial = initial, False
        word = _norm(token)
        if word in _STOP or word in _NUMBER_WORDS or token[0].isdigit():
            continue
        acronym = len(token) > 1 and token.isupper()
        if acronym or any(c.isdigit() for c in token) or (token[0].isupper() and not first):
            names.add(word)
    return names


def _names_differ(tq: list[str], tc: list[str], wq: list[str], wc: list[str]) -> bool:
    # A name in one question must be a word of the other (where it may open the sentence).
    return bool(_names(tq) - set(wc)) or bool(_names(tc) - set(wq))


def _stem(word: str) -> str:
    for suffix in ("ing", "ers", "er", "ed", "es", "s", "ly"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _antonym_swapped(a: set[str], b: set[str]) -> bool:
    for word in a - b:
        if _OPPOSITE.get(word, set()) & (b - a):
            return True
    return False


def _direction_mismatch(a: list[str], b: list[str]) -> bool:
    def after(words: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for i, word in enumerate(words):
            if word in _DIRECTIONAL or (word == "to" and ("from" in words or "convert" in words)):
                following = next((w for w in words[i + 1:] if w not in _STOP), "")
                out.setdefault(word, following)
        return out

    first, second = after(a), after(b)
    return any(second[w] != target for w, target in first.items() if w in second)


def _minimal_pair(a: list[str], b: list[str]) -> bool:
    """Exactly one content word replaced by an unrelated one, everything else the same."""
    content_a = [w for w in a if w not in _STOP]
    content_b = [w for w in b if w not in _STOP]
    matcher = difflib.SequenceMatcher(a=content_a, b=content_b, autojunk=False)
    ops = [op for op in matcher.get_opcodes() if op[0] != "equal"]
    if len(ops) != 1:
        return False
    tag, i1, i2, j1, j2 = ops[0]
    if tag != "replace" or i2 - i1 != 1 or j2 - j1 != 1:
        return False
    x, y = content_a[i1], content_b[j1]
    return _stem(x) != _stem(y) and not (x.startswith(y) or y.startswith(x))


def mismatch(query: str, cached: str) -> str | None:
    """The name of the first check ``cached`` fails as an answer key for ``query``; None if all pass."""
    tq, tc = _tokens(query), _tokens(cached)
    wq, wc = [_norm(t) for t in tq if t not in _END], [_norm(t) for t in tc if t not in _END]
    if _numbers(wq) != _numbers(wc):
        return "numbers"
    if _negations(wq) != _negations(wc):
        return "negation"
    if _names_differ(tq, tc, wq, wc):
        return "names"
    if _antonym_swapped(set(wq), set(wc)):
        return "antonym"
    if _direction_mismatch(wq, wc):
        return "word_order"
    if _minimal_pair(wq, wc):
        return "substitution"
    return None
