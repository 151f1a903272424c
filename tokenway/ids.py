"""Unique ids without a system call each: a random per-instance prefix plus a counter.

Request ids and ledger record ids are made on every request; ``secrets.token_hex`` reads
``os.urandom`` each time, which showed up in profiles. 64 random bits per process (or per
ledger) keep ids unique across replicas; the counter keeps them unique within one.
"""

from __future__ import annotations

import itertools
import secrets


class IdGenerator:
    __slots__ = ("_counter", "_prefix")

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix + secrets.token_hex(8)
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):08x}"
