"""The counter store: rate-limit buckets, concurrency slots and budget counters, behind one protocol.

Two implementations: in process (``memory``, the embedded default, one process) and Redis
(``redis``, any number of processes and hosts). Admission is one atomic step in either: every
bucket, the slot and every budget line are taken together, or nothing is.

Money is integer nano-dollars (1e-9 USD) everywhere below the API, so budgets, reservations and
the ledger add up exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from tokenway.stores.base import Budget


class CountersUnavailable(Exception):
    """The shared counter store cannot be reached (the access policy fails open or closed)."""


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket of ``capacity`` per minute, refilled continuously. A request takes one from a
    ``requests`` bucket and its (estimated) prompt tokens from a ``tokens`` bucket."""

    key: str
    capacity: int
    kind: Literal["requests", "tokens"]
    scope: str  # "key", "team", "ip" or "model": named in the 429 message


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """One budget counter (a key's or a team's, for the current period), in nano-dollars."""

    key: str
    limit: int
    ttl_s: int  # how long the counter outlives its period (0: forever)
    scope: str
    budget: Budget


@dataclass(slots=True)
class Ask:
    """What one request takes at admission and gives back when it ends."""

    buckets: list[Bucket]
    tokens: int  # the prompt estimate, taken from every ``tokens`` bucket
    lines: list[BudgetLine] = field(default_factory=list)
    amount: int = 0  # nano-dollars reserved on every line: the request's worst case
    slot: str | None = None  # the key's concurrency slot, when it limits requests in flight
    slot_limit: int = 0
    member: str = ""  # this request's place in the slot


@dataclass(slots=True)
class Decision:
    """The store's answer to an ``Ask``. ``levels``: each bucket's level after the request (before it,
    when refused), what the ``x-ratelimit-*`` headers report."""

    levels: list[float]
    denied: int | None = None  # index of the bucket that refused; len(buckets) when the slot did
    retry_after: float = 0.0  # seconds until the refusing bucket has room
    budget_full: int | None = None  # index of the budget line the amount did not fit
    committed: int = 0  # that line's spend plus reservations in flight

    @property
    def admitted(self) -> bool:
        return self.denied is None and self.budget_full is None


class Counters(Protocol):
    failures: int  # store calls that failed (admissions and settles)

    async def admit(self, ask: Ask) -> Decision:
        """Take everything ``ask`` asks for, or nothing and why (atomically, whatever runs alongside)."""

    def settle(self, ask: Ask, tokens: int, money: int) -> None:
        """The admitted request is over: free its slot, move its ``tokens`` buckets by ``tokens`` (the
        real count less the estimate; a bucket may go into debt) and its budget lines by ``money`` (the
        real cost less the reservation). Nobody waits for it: a shared store sends it a moment later."""

    async def committed(self, line: BudgetLine) -> int:
        """Spend plus reservations in flight on one budget line."""

    async def seed(self, line: BudgetLine, amount: int) -> None:
        """Start a budget counter at ``amount`` unless it exists (the embedded store starts empty)."""

    async def aclose(self) -> None: ...
