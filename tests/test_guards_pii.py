"""PII, secrets and blocked terms, in process: what is found, what is not, and how it is masked."""

from __future__ import annotations

from collections import Counter

import pytest

from tokenway.guards.base import GuardBlocked, TextGuard, apply
from tokenway.guards.pii import PiiFinder, iban_ok, luhn_ok
from tokenway.guards.terms import TermsFinder

FOUND = [
    ("write to bob.smith+tag@example.co.uk today", "email", "bob.smith+tag@example.co.uk"),
    ("card 4111 1111 1111 1111 exp 12/29", "card", "4111 1111 1111 1111"),
    ("card 5500-0000-0000-0004.", "card", "5500-0000-0000-0004"),
    ("amex 378282246310005", "card", "378282246310005"),
    ("4111 1111 1111 1111 2024", "card", "4111 1111 1111 1111"),  # a trailing year is not part of it
    ("call +44 20 7946 0958 now", "phone", "+44 20 7946 0958"),
    ("call (555) 123-4567", "phone", "(555) 123-4567"),
    ("call 555.123.4567", "phone", "555.123.4567"),
    ("appelez +33 1 23 45 67 89", "phone", "+33 1 23 45 67 89"),
    ("IBAN DE89 3704 0044 0532 0130 00 thanks", "iban", "DE89 3704 0044 0532 0130 00"),
    ("IBAN DE89370400440532013000", "iban", "DE89370400440532013000"),
    ("GB82 WEST 1234 5698 7654 32", "iban", "GB82 WEST 1234 5698 7654 32"),
    ("key sk-proj-abcdefghijklmnopqrstuvwx1234 here", "secret", "sk-proj-abcdefghijklmnopqrstuvwx1234"),
    ("aws AKIAIOSFODNN7EXAMPLE", "secret", "AKIAIOSFODNN7EXAMPLE"),
    ("gh ghp_" + "a1B2" * 9, "secret", "ghp_" + "a1B2" * 9),
    ("slack xoxb-1234567890-abcdef", "secret", "xoxb-1234567890-abcdef"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc.def", "secret", "Bearer eyJhbGciOiJIUzI1NiJ9.abc.def"),
    ("token Zx8Qw2Lp9Rt4Vb7Nm3Kj6Hg1Fd5Sa0Pq is secret", "secret", "Zx8Qw2Lp9Rt4Vb7Nm3Kj6Hg1Fd5Sa0Pq"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
     "secret", "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----"),
]

NOT_FOUND = [
    "card 4111111111111112",  # Luhn fails
    "order number 1234567890123456",  # 16 digits, Luhn fails
    "IBAN DE89370400440532013001",  # mod-97 fails
    "IBAN DE8937040044053201300",  # too short for Germany
    "commit 3f2a9c8d7e6b5a4f3e2d1c0b9a8f7e6d5c4b3a29 is fine",  # lowercase hex: not random enough
    "the date 2024-01-15, version 1.2.3 and 12345 items",
    "responsibilities of internationalization",  # long words are not tokens
    "me @ home, a@b",  # no domain
]


@pytest.mark.parametrize(("text", "kind", "match"), FOUND)
def test_finds(text: str, kind: str, match: str) -> None:
    spans = PiiFinder().find(text)
    assert [(s.kind, text[s.start:s.end]) for s in spans] == [(kind, match)]


@pytest.mark.parametrize("text", NOT_FOUND)
def test_does_not_find(text: str) -> None:
    assert PiiFinder().find(text) == []


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111121")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB82 WEST 1234 5698 7654 33")


def test_only_the_configured_kinds() -> None:
    text = "bob@example.com, 4111 1111 1111 1111, +44 20 7946 0958"
    assert [s.kind for s in PiiFinder(["card"]).find(text)] == ["card"]
    assert [s.kind for s in PiiFinder(["email", "phone"]).find(text)] == ["email", "phone"]


def test_many_matches_in_order_among_other_text() -> None:
    filler = "The gateway forwards each request and streams the answer back. " * 10
    text = f"{filler}mail a@example.org{filler}card 4111111111111111 and {filler}key AKIAIOSFODNN7EXAMPLE"
    assert [s.kind for s in PiiFinder().find(text)] == ["email", "card", "secret"]


def test_mask_replaces_each_match_with_its_label() -> None:
    seen: list[tuple[str, str, str, Counter[str]]] = []
    guard = TextGuard("pii", "mask", PiiFinder())
    out = apply("mail bob@example.com or call (555) 123-4567, card 4111111111111111", [guard], "input",
                lambda *args: seen.append(args))
    assert out == "mail [EMAIL] or call [PHONE], card [CARD]"
    assert seen == [("pii", "input", "mask", Counter(email=1, phone=1, card=1))]


def test_block_raises_naming_the_guard_and_field() -> None:
    guard = TextGuard("pii", "block", PiiFinder())
    with pytest.raises(GuardBlocked) as caught:
        apply("my card is 4111111111111111", [guard], "input", lambda *args: None, "messages[0].content")
    error = caught.value
    assert error.status == 400 and error.code == "guard_blocked" and error.param == "messages[0].content"
    assert "'pii' guard" in error.message and "card" in error.message and "4111" not in error.message


def test_flag_reports_and_leaves_the_text() -> None:
    seen: list[object] = []
    text = "bob@example.com"
    assert apply(text, [TextGuard("pii", "flag", PiiFinder())], "output", lambda *a: seen.append(a)) is text
    assert len(seen) == 1


def test_terms_whole_words_case_insensitive() -> None:
    finder = TermsFinder(["foo", "project x", "c++"])
    text = "Foo, food, FOO. Project   X and c++ but not abc++ or projectx"
    assert [text[s.start:s.end] for s in finder.find(text)] == ["Foo", "FOO", "Project   X", "c++"]
    assert finder.longest == len("project x")
