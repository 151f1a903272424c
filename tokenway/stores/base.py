"""The records and the small protocols every store implements.

Money is integer nano-dollars (1e-9 USD) everywhere below the API: budgets, reservations and
ledger costs add up exactly (Redis INCRBY and SQL bigint), with no float drift between the
sum of served costs and what a budget counted.
"""

from __future__ import annotations

import calendar
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokenway.prompts.options import PromptPin

NANOS_PER_DOLLAR = 1_000_000_000
Period = Literal["day", "month", "total"]
_BUDGET = re.compile(r"^\s*\$?(\d+(?:\.\d+)?)\s*/\s*(day|month|total)\s*$")


class Budget(BaseModel):
    """A spending cap in US dollars per UTC day, calendar month, or in total.

    Written ``5.00/day`` in the CLI and YAML, or as ``{amount: 5, period: day}``.
    """

    model_config = ConfigDict(extra="forbid")

    # At most a billion dollars: the counters hold nano-dollars in 64 bits (Redis, SQL), and a larger
    # amount overflowed them (1e308 made every request of the key a 500; found by the fuzz test).
    amount: float = Field(gt=0, le=1e9)
    period: Period = "total"

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = _BUDGET.match(value)
            if match is None:
                raise ValueError(f"a budget is written like '5.00/day' (period day, month or total), not {value!r}")
            return {"amount": float(match[1]), "period": match[2]}
        return value

    @property
    def nanos(self) -> int:
        return round(self.amount * NANOS_PER_DOLLAR)

    def label(self, now: float | None = None) -> str:
        """The current period's name, part of the counter's key: a new period starts a new counter."""
        if self.period == "total":
            return "total"
        moment = time.gmtime(now if now is not None else time.time())
        return time.strftime("d%Y-%m-%d" if self.period == "day" else "m%Y-%m", moment)

    def ttl_s(self) -> int:
        """How long the counter must outlive its period (0: forever)."""
        return _COUNTER_TTL_S[self.period]

    def period_start(self, now: float | None = None) -> float:
        moment = time.gmtime(now if now is not None else time.time())
        if self.period == "total":
            return 0.0
        day = 1 if self.period == "month" else moment.tm_mday
        return float(calendar.timegm((moment.tm_year, moment.tm_mon, day, 0, 0, 0)))


_COUNTER_TTL_S = {"day": 2 * 86400, "month": 32 * 86400, "total": 0}


class KeyRecord(BaseModel):
    """A virtual API key. Only the SHA-256 of the secret is stored: keys are 32 random bytes, so a
    fast hash is enough (no dictionary to attack) and lookups stay O(1)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    hash: str
    hint: str = ""  # the secret's last 4 characters, to tell keys apart in listings
    name: str | None = None
    owner: str | None = None
    team: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    models: list[str] = Field(default_factory=list)  # empty: every model
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    max_parallel: int | None = Field(default=None, ge=1)
    max_streams: int | None = Field(default=None, ge=1)  # streams in flight; None: limits.max_streams_per_key
    budget: Budget | None = None
    # "buffer": this key's streams asking for JSON or tools are answered in full upstream, checked and
    # retried, then replayed (guaranteed valid output); None: the model's setting (tokenway/validation)
    structured_output: Literal["validate", "buffer"] | None = None
    guards: list[str] = Field(default_factory=list)  # guard profiles (config guards.profiles) on top of the model's
    prompt: PromptPin | None = None  # a prompt version this key's chat requests run with (tokenway/prompts)
    expires_at: float | None = None
    revoked: bool = False
    created_at: float = Field(default_factory=time.time)

    def public(self) -> dict[str, Any]:
        """What the admin API and CLI show: everything but the hash."""
        return self.model_dump(exclude={"hash"})

    def allows(self, model: str) -> bool:
        """Whether the key may use ``model`` (an empty allow-list allows every model)."""
        return not self.models or model in self.models

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(slots=True)
class UsageRecord:
    """One ledger row per request."""

    id: str  # the ledger's own unique id (clients choose request ids, so those may repeat)
    request_id: str
    ts: float
    key_id: str | None
    team: str | None
    model: str | None
    deployment: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_nanos: int
    latency_ms: float
    status: int
    partial: bool = False  # a stream cut short: billed for its prompt and the tokens delivered
    job_id: str | None = None  # the async job or batch line the request ran for
    batch_id: str | None = None

    def row(self) -> tuple[Any, ...]:
        return (self.id, self.request_id, self.ts, self.key_id, self.team, self.model, self.deployment,
                self.prompt_tokens, self.completion_tokens, self.cached_tokens, self.cost_nanos,
                self.latency_ms, self.status, self.partial, self.job_id, self.batch_id)


USAGE_COLUMNS = ("id", "request_id", "ts", "key_id", "team", "model", "deployment", "prompt_tokens",
                 "completion_tokens", "cached_tokens", "cost_nanos", "latency_ms", "status", "partial",
                 "job_id", "batch_id")

# How a database writes a batch of usage records: in slices with a pause between them. One
# statement of 500 rows kept a core busy for ~2 ms (the SQLite writer thread, or Postgres and the
# driver's encoding in the event loop), and on a small box the requests whose wake-up landed
# behind it waited that long: it was the gateway's whole c=1 p99 above its p90. Slices bound that
# wait to a slice's ~0.1 ms. A batch too big to pace (a backlog, a replay) goes at full speed, so
# the ledger never falls behind for the pauses' sake.
_ROWS_PER_SLICE = 20
_SLICE_PAUSE_S = 0.001
_PACED_ROWS = 1000


def paced_slices(records: list[UsageRecord]) -> tuple[list[list[UsageRecord]], float]:
    """The batch in slices, and the pause to take between two of them (0: none)."""
    pause = _SLICE_PAUSE_S if len(records) <= _PACED_ROWS else 0.0
    return [records[i:i + _ROWS_PER_SLICE] for i in range(0, len(records), _ROWS_PER_SLICE)], pause


GroupBy = Literal["key", "team", "model", "day"]

# The answered requests of a window, for ``usage_traffic``: in one place so both databases ask the same.
ANSWERED = "ts >= {since} AND ts < {until} AND status < 400"


@dataclass(frozen=True, slots=True)
class UsageTraffic:
    """Answered requests in a window: how many, since when, the busiest calendar minute, and how many
    requests had each prompt and completion size (histograms: the sizes are few, the requests many)."""

    requests: int
    first_ts: float | None
    busiest_minute: int
    prompt_tokens: list[tuple[int, int]]  # (tokens, requests)
    completion_tokens: list[tuple[int, int]]


class Database(Protocol):
    """Keys and the usage ledger: SQLite (embedded) or Postgres (shared)."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def put_key(self, record: KeyRecord) -> None:
        """Insert or replace a key; bumps the table's change counter."""

    async def get_key(self, key_id: str) -> KeyRecord | None: ...

    async def list_keys(self) -> list[KeyRecord]: ...

    async def keys_changed_since(self, seq: int) -> tuple[list[KeyRecord], int]:
        """Keys written after change number ``seq``, and the newest change number."""

    async def insert_usage(self, records: list[UsageRecord]) -> None:
        """Idempotent on ``id``: a batch replayed from the write-ahead file is counted once."""

    async def usage_summary(
        self, group_by: GroupBy, since: float, until: float, key_id: str | None = None, team: str | None = None
    ) -> list[dict[str, Any]]: ...

    async def usage_traffic(self, since: float, until: float) -> UsageTraffic:
        """The shape of the answered requests' traffic (status below 400), counted in the database."""

    async def spent(self, since: float, key_id: str | None = None, team: str | None = None) -> int:
        """Nano-dollars recorded since ``since`` for a key or a team."""
