"""The traffic to price: requests a day, the peak rate, and the sizes of prompts and completions,
read from the usage ledger, from a bench file's requests, or given as numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tokenway.bench.metrics import percentile
from tokenway.stores.base import Database

DAY_S = 86400.0
DAYS_PER_MONTH = 365.25 / 12
# A ledger younger than this is read as this long: a few minutes of traffic say little about a day.
MIN_OBSERVED_S = 3600.0


@dataclass(frozen=True, slots=True)
class Tokens:
    """One side of a request's tokens (prompt or completion) over the traffic."""

    mean: float
    p50: float
    p95: float
    max: float

    @classmethod
    def of(cls, values: list[int]) -> Tokens:
        ordered = sorted(float(v) for v in values)
        if not ordered:
            raise ValueError("no requests to measure")
        return cls(sum(ordered) / len(ordered), percentile(ordered, 50), percentile(ordered, 95), ordered[-1])

    @classmethod
    def fixed(cls, value: float) -> Tokens:
        return cls(value, value, value, value)


@dataclass(frozen=True, slots=True)
class Traffic:
    requests_per_day: float
    peak_rps: float  # the busiest 60 seconds' requests per second
    prompt: Tokens
    completion: Tokens
    source: str  # where the numbers came from, for the report

    @property
    def mean_rps(self) -> float:
        return self.requests_per_day / DAY_S

    @property
    def peak_factor(self) -> float:
        """The peak over the mean rate: how much more capacity the busiest minute needs."""
        return self.peak_rps / self.mean_rps if self.mean_rps > 0 else 1.0

    def scaled(self, requests_per_day: float) -> Traffic:
        """The same shape (token sizes, peak over mean) at another volume."""
        return replace(self, requests_per_day=requests_per_day, peak_rps=requests_per_day / DAY_S * self.peak_factor)


def from_requests(rows: list[tuple[float, int, int]], since: float, until: float, source: str) -> Traffic:
    """Traffic from (ts, prompt_tokens, completion_tokens) rows recorded between ``since`` and ``until``."""
    if not rows:
        raise ValueError(f"{source}: no answered requests between the dates asked for")
    observed_s = max(until - max(since, rows[0][0]), MIN_OBSERVED_S)
    return Traffic(
        requests_per_day=len(rows) * DAY_S / observed_s,
        peak_rps=_busiest_minute([ts for ts, _, _ in rows]) / 60.0,
        prompt=Tokens.of([p for _, p, _ in rows]),
        completion=Tokens.of([c for _, _, c in rows]),
        source=f"{source}: {len(rows)} requests over {observed_s / DAY_S:.2f} days",
    )


def _busiest_minute(times: list[float]) -> int:
    """The most requests in any 60 seconds (a sliding window over the sorted send times)."""
    most, first = 0, 0
    for last, ts in enumerate(times):
        while ts - times[first] >= 60.0:
            first += 1
        most = max(most, last - first + 1)
    return most


async def from_ledger(db: Database, days: float, now: float) -> Traffic:
    since = now - days * DAY_S
    rows = await db.usage_requests(since, now)
    return from_requests(rows, since, now, f"usage ledger, last {days:g} days")


def from_numbers(requests_per_day: float, peak_factor: float, prompt: Tokens, completion: Tokens,
                 source: str) -> Traffic:
    """A volume with a peak ``peak_factor`` x its mean rate."""
    if not (math.isfinite(requests_per_day) and requests_per_day > 0 and math.isfinite(peak_factor)
            and peak_factor >= 1):
        raise ValueError("--requests-per-day must be above 0 and --peak-factor at least 1.")
    return Traffic(requests_per_day, requests_per_day / DAY_S * peak_factor, prompt, completion,
                   f"{requests_per_day:,.0f} requests/day given, {source}")
