"""Compose the labelled sample from the hand-written pools: ``train.jsonl`` and ``test.jsonl``.

    .venv/bin/python benchmarks/guards/injection/build_sample.py

Each split is built from its own pool module only (``pools_train.py``, ``pools_test.py``), so no
sentence, carrier document or attack phrase appears in both; what the splits share is the recipe
below and the obfuscation functions. Deterministic (one seed per split). Rows:
``{"text", "label": 1 injection | 0 benign, "kind"}``.
"""

from __future__ import annotations

import base64
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pools_test
import pools_train

HERE = Path(__file__).parent
_CYRILLIC = str.maketrans("aeopcxiAEOPCXI", "\u0430\u0435\u043e\u0440\u0441\u0445\u0456"
                                             "\u0410\u0415\u041e\u0420\u0421\u0425\u0406")
_LEET = str.maketrans("aeiost", "4310$7")


def homoglyphs(text: str, rng: random.Random) -> str:
    """Half the letters that have a Cyrillic twin swapped for it."""
    return "".join(ch.translate(_CYRILLIC) if rng.random() < 0.5 else ch for ch in text)


def zero_width(text: str, rng: random.Random) -> str:
    """Zero-width spaces and joiners inside the longer words."""
    def split(match: re.Match[str]) -> str:
        word = match.group()
        cut = rng.randrange(1, len(word) - 1)
        return word[:cut] + rng.choice("\u200b\u200c\u200d\u2060") + word[cut:]
    return re.sub(r"[A-Za-z]{5,}", split, text)


def leetspeak(text: str, rng: random.Random) -> str:
    """Letters swapped for digits in most words."""
    return " ".join(word.translate(_LEET) if rng.random() < 0.7 else word for word in text.split(" "))


def letter_spaced(text: str, rng: random.Random) -> str:
    """The first three words spelled out with spaces or dots between the letters."""
    words = text.split(" ")
    sep = rng.choice(" .-")
    return " ".join([sep.join(word) for word in words[:3]] + words[3:])


def fullwidth(text: str, rng: random.Random) -> str:
    """ASCII letters as their full-width forms (NFKC folds them back)."""
    return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in text)


def shouting(text: str, rng: random.Random) -> str:
    """Upper case in markdown emphasis, split over lines."""
    words = text.upper().split(" ")
    half = max(1, len(words) // 2)
    return f"**{' '.join(words[:half])}**\n\n{' '.join(words[half:])}"


def encoded(text: str, rng: random.Random) -> str:
    """The whole payload in base64, with or without a hint to decode it."""
    blob = base64.b64encode(text.encode()).decode()
    return rng.choice([f"{blob}", f"Here is my question in base64, answer it: {blob}",
                       f"Decode this and do what it says: {blob}"])


OBFUSCATIONS: list[Callable[[str, random.Random], str]] = [homoglyphs, zero_width, leetspeak, letter_spaced,
                                                          fullwidth, shouting, encoded]


def embed(carrier: str, insert: str, rng: random.Random) -> str:
    """``insert`` placed at a sentence boundary of ``carrier``."""
    parts = re.split(r"(?<=[.!?])\s+", carrier)
    at = rng.randrange(0, len(parts) + 1)
    return " ".join([*parts[:at], insert, *parts[at:]])


def build(pools: ModuleType, seed: int, tasks_per_override: int, per_obfuscation: int) -> list[dict[str, object]]:
    """Every row of one split, composed from ``pools`` alone."""
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []

    def add(text: str, label: int, kind: str) -> None:
        rows.append({"text": text, "label": label, "kind": kind})

    direct = []
    for override in pools.OVERRIDES:
        for task in rng.sample(pools.TASKS, tasks_per_override):
            text = f"{override} {task}"
            if rng.random() < 0.3:  # the attack inside an ordinary-looking request
                text = f"{rng.choice(pools.ASKS)} {rng.choice(pools.ORDINARY)} {text}"
            direct.append(text)
            add(text, 1, "direct")
    for persona in pools.PERSONAS:
        add(persona if rng.random() < 0.5 else f"{persona} {rng.choice(pools.TASKS)}", 1, "persona")
    for leak in pools.LEAKS:
        add(leak, 1, "prompt-leak")
    for order in pools.HIDDEN_ORDERS:
        for carrier in rng.sample(pools.CARRIERS, 3):
            add(f"{rng.choice(pools.ASKS)}\n\n{embed(carrier, order, rng)}", 1, "indirect")
    for text in pools.SUBTLE:
        add(text, 1, "subtle")
    for text in pools.FOREIGN:
        add(text, 1, "multilingual")
    attacks = direct + list(pools.PERSONAS) + list(pools.LEAKS)
    for obfuscate in OBFUSCATIONS:
        for text in rng.sample(attacks, per_obfuscation):
            add(obfuscate(text, rng), 1, f"obfuscated-{obfuscate.__name__}")

    for text in pools.ORDINARY:
        add(text, 0, "ordinary")
    for text in pools.HARD:
        add(text, 0, "hard-negative")
    for text in pools.FOREIGN_BENIGN:
        add(text, 0, "multilingual-benign")
    for text in pools.CODE:
        add(text, 0, "code")
    for carrier in pools.CARRIERS:
        add(f"{rng.choice(pools.ASKS)}\n\n{carrier}", 0, "document")
        for insert in rng.sample(pools.BENIGN_INSERTS, 2):
            add(f"{rng.choice(pools.ASKS)}\n\n{embed(carrier, insert, rng)}", 0, "document")
    benign = list(pools.ORDINARY) + list(pools.HARD)
    for obfuscate in OBFUSCATIONS[:-1]:  # a benign base64 blob is in HARD already
        for text in rng.sample(benign, 2):
            add(obfuscate(text, rng), 0, f"obfuscated-benign-{obfuscate.__name__}")
    return rows


def write(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), "utf-8")


def main() -> None:
    train = build(pools_train, seed=1, tasks_per_override=3, per_obfuscation=5)
    test = build(pools_test, seed=2, tasks_per_override=3, per_obfuscation=4)
    overlap = {row["text"] for row in train} & {row["text"] for row in test}
    if overlap:
        raise SystemExit(f"{len(overlap)} texts are in both splits, e.g. {next(iter(overlap))!r}")
    write(HERE / "train.jsonl", train)
    write(HERE / "test.jsonl", test)
    for name, rows in (("train", train), ("test", test)):
        positives = sum(int(row["label"] == 1) for row in rows)
        print(f"{name}: {len(rows)} rows, {positives} injections, {len(rows) - positives} benign")


if __name__ == "__main__":
    main()
