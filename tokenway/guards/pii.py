"""Personal data and secrets by regular expression, run only where a cheap anchor says one may be.

A regular expression scanned over a whole 2 KB prompt costs 20-60 µs in Python's engine, per
pattern; the anchors cost about 1 µs each. So: an ``@`` for an email; ``-----BEGIN`` for a PEM key;
``earer`` for a bearer token; a run of 14+ token characters for a prefixed key (``sk-``, ``AKIA``,
``ghp_``, ``xox?-``) or, at 32+, a random-looking token; two capitals and two digits for an IBAN;
the shape of a card or a phone number in the classes (13+ digits; a "+"; 3-3-4 digits). The patterns then run
only on those runs or on small windows around the anchors.

Candidates are checked where a pattern alone would guess: card numbers by Luhn (a random run of
16 digits passes 1 time in 10), IBANs by length for their country and mod-97, phone numbers by
their digit count, long tokens by their character mix and entropy (so words and hex hashes are
not secrets). Costs: ``benchmarks/guards/RESULTS.md``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable

from tokenway.guards.base import Span
from tokenway.guards.options import DEFAULT_PII_KINDS, PiiKind

LABELS = {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]", "iban": "[IBAN]", "secret": "[SECRET]"}

_EMAIL_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}\.)+[A-Za-z]{2,24}(?![\w-])")
_LOCAL_PUNCTUATION = frozenset("._%+-")
_PEM = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----)?")
_BEARER = re.compile(r"\b[Bb]earer[ \t]+[A-Za-z0-9._~+/-]{16,}=*")
_PREFIXED = re.compile(r"sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{20,}|(?:AKIA|ASIA)[0-9A-Z]{16}"
                       r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}|xox[abprs]-[A-Za-z0-9-]{10,}")
_IBAN = re.compile(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
# Cards before phones: where both could start, the longer card is tried first.
_NUMBERS = re.compile(
    r"(?P<card>(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-]))"
    r"|(?P<phone>(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![\w-])"
    r"|(?<![\w(])(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w-]))"
)

# Anchors are found in a copy of the text with each ASCII character replaced by its class (one
# str.translate, ~2 µs for 2 KB), by substring search: a regular expression then runs only near
# them, never over the whole text (a scan of 2 KB costs 20-60 µs per pattern in Python's engine).
_CLASSES = str.maketrans(
    {**{chr(c): " " for c in range(128)}, **dict.fromkeys("0123456789", "0"),
     **dict.fromkeys("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "A"), **dict.fromkeys("abcdefghijklmnopqrstuvwxyz", "a"), "+": "+"}
)
_TOKEN_CHARS = str.maketrans(
    {**{chr(c): " " for c in range(128)},
     **dict.fromkeys("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+/_=-", "t")}
)
_RUN = re.compile("t+")
# In the classes: what a card (13-19 digits from a group of four, single separators) or a phone
# number (an international one starting with "+", or 3-3-4 digits with separators) looks like. Each
# pattern starts with a literal, which the engine finds in C (an alternation of them would not), so
# words and lone figures are skipped cheaply.
_NUMBER_SHAPES = (
    re.compile(r"0000(?: ?0){9,15}"), re.compile(r"\+0(?: {0,2}0){6,14}"), re.compile("000 {1,2}000 0000"),
)
_SHORTEST_SECRET = 14  # xox?-  and 10 more: the shortest prefixed secret
_LONG_TOKEN = 32  # an unprefixed run this long may be a secret

def luhn_ok(digits: str) -> bool:
    """The Luhn check of a card number (digits only)."""
    doubled = sum(_DOUBLED[char] for char in digits[-2::-2])
    return (sum(map(int, digits[-1::-2])) + doubled) % 10 == 0


_DOUBLED = {str(d): d * 2 - 9 if d > 4 else d * 2 for d in range(10)}


# Lengths of IBANs by country (ISO 13616); a candidate of another length is not one.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24,
    "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21,
    "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21,
    "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30,
    "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}


def iban_ok(candidate: str) -> bool:
    """An IBAN's length for its country and its mod-97 check (ISO 13616)."""
    iban = candidate.replace(" ", "")
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban):
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def phone_end(candidate: str) -> int:
    digits = sum(char.isdigit() for char in candidate)
    return len(candidate) if 7 <= digits <= 15 else 0


def card_end(candidate: str) -> int:
    """The length of the card number ``candidate`` starts with (0: none). The pattern takes digit
    groups greedily ("4111 1111 1111 1111 2024" is 20 digits): shorter runs of whole groups are tried too."""
    digits = _SEPARATOR.sub("", candidate)
    if 13 <= len(digits) <= 19 and luhn_ok(digits):
        return len(candidate)
    ends = [match.start() for match in _SEPARATOR.finditer(candidate)]
    for end in reversed(ends):
        digits = _SEPARATOR.sub("", candidate[:end])
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            return end
    return 0


_SEPARATOR = re.compile(r"[ -]")


def token_end(candidate: str) -> int:
    """A long run that looks random: upper, lower and digits all present, and high entropy per char
    (English words, identifiers and lowercase hex hashes fail one or the other)."""
    token = candidate.rstrip("=")
    if not (any(c.isdigit() for c in token) and any(c.isupper() for c in token) and any(c.islower() for c in token)):
        return 0
    counts = Counter(token)
    size = len(token)
    entropy = -sum(n / size * math.log2(n / size) for n in counts.values())
    return len(candidate) if entropy >= 4.0 else 0


def iban_end(candidate: str) -> int:
    return len(candidate) if iban_ok(candidate) else 0


class PiiFinder:
    """Finds the configured kinds of personal data and secrets in text (see the module docstring)."""

    def __init__(self, kinds: Iterable[PiiKind] = DEFAULT_PII_KINDS) -> None:
        self.kinds = frozenset(kinds)

    def find(self, text: str) -> list[Span]:
        kinds = self.kinds
        spans: list[Span] = []
        if "email" in kinds and "@" in text:
            spans += _emails(text)
        if "secret" in kinds:
            spans += self._secrets(text)
        if kinds & {"card", "phone", "iban"}:
            classes = text.translate(_CLASSES)
            if "iban" in kinds:
                spans += [_span(i, m.end(), "iban") for i in _all(classes, "AA00")
                          if (i == 0 or not text[i - 1].isalnum()) and (m := _IBAN.match(text, i)) and iban_ok(m[0])]
            if kinds & {"card", "phone"}:
                spans += self._numbers(text, classes)
        return _ordered(spans) if len(spans) > 1 else spans

    def _numbers(self, text: str, classes: str) -> list[Span]:
        spans: list[Span] = []
        for shape in (m for pattern in _NUMBER_SHAPES for m in pattern.finditer(classes)):
            start, end = shape.span()
            # Back far enough for a "+1 " or "(" the shape does not start with; one past the end, so
            # that the pattern's look-ahead sees the next character.
            for m in _NUMBERS.finditer(text, max(0, start - 3), min(len(text), end + 1)):
                kind = "card" if m.lastgroup == "card" else "phone"
                length = card_end(m[0]) if kind == "card" else phone_end(m[0])
                if length and kind in self.kinds:
                    spans.append(_span(m.start(), m.start() + length, kind))
        return spans

    def _secrets(self, text: str) -> list[Span]:
        spans = []
        if "-----BEGIN" in text:
            spans += [_span(m.start(), m.end(), "secret") for m in _PEM.finditer(text, text.index("-----BEGIN"))]
        if "earer" in text:
            spans += [_span(m.start(), m.end(), "secret") for m in _BEARER.finditer(text)]
        tokens = text.translate(_TOKEN_CHARS)
        at = tokens.find("t" * _SHORTEST_SECRET)
        while at >= 0:
            start, end = _RUN.match(tokens, at).span()  # type: ignore[union-attr]  # a run begins at ``at``
            run = text[start:end]
            prefixed = _PREFIXED.search(run)
            if prefixed:
                spans.append(_span(start + prefixed.start(), start + prefixed.end(), "secret"))
            elif end - start >= _LONG_TOKEN and token_end(run):
                spans.append(_span(start, end, "secret"))
            at = tokens.find("t" * _SHORTEST_SECRET, end)
        return spans


def _span(start: int, end: int, kind: str) -> Span:
    return Span(start, end, kind, LABELS[kind])


def _emails(text: str) -> list[Span]:
    """Emails, found from each "@": the local part by a walk back, the domain by an anchored match."""
    spans = []
    at = text.find("@")
    while at >= 0:
        start = at
        while start > 0 and at - start <= 64 and (text[start - 1].isalnum() or text[start - 1] in _LOCAL_PUNCTUATION):
            start -= 1
        domain = _EMAIL_DOMAIN.match(text, at + 1)
        if domain is not None and 0 < at - start <= 64:
            spans.append(_span(start, domain.end(), "email"))
        at = text.find("@", at + 1)
    return spans


def _all(text: str, needle: str) -> list[int]:
    """Every index of ``needle`` in ``text`` (substring search in C)."""
    found = []
    at = text.find(needle)
    while at >= 0:
        found.append(at)
        at = text.find(needle, at + 1)
    return found


def _ordered(spans: list[Span]) -> list[Span]:
    """Spans by start, an overlapping later one dropped (the earlier, or at one place the longer, wins)."""
    out: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if not out or span.start >= out[-1].end:
            out.append(span)
    return out
