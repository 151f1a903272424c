"""The traffic to price: requests a day, the peak rate, and the sizes of prompts and completions,
read from the usage ledger, from a bench file's requests, or given as numbers."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace

from tokenway.stores.base import Database, UsageTraffic

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
        return cls.of_counts(list(Counter(values).items()))

    @classmethod
    def of_counts(cls, counts: list[tuple[int, int]]) -> Tokens:
        """From (size, requests of that size) pairs: the ledger counts them, the sizes are few."""
        ordered = sorted((size, n) for size, n in counts if n > 0)
        total = sum(n for _, n in ordered)
        if not total:
            raise ValueError("no requests to measure")

        def nth(rank: int) -> float:  # the rank-th smallest size, from 0
            seen = 0
            for size, n in ordered:
                seen += n
                if rank < seen:
                    return float(size)
            return float(ordered[-1][0])

        def percentile(p: float) -> float:  # linear between order statistics, numpy's default
            position = (total - 1) * p / 100.0
            low = math.floor(position)
            return nth(low) + (nth(min(low + 1, total - 1)) - nth(low)) * (position - low)

        return cls(sum(size * n for size, n in ordered) / total, percentile(50), percentile(95), float(ordered[-1][0]))

    @classmethod
    def fixed(cls, value: float) -> Tokens:
        return cls(value, value, value, value)


@dataclass(frozen=True, slots=True)
class Traffic:
    requests_per_day: float
    peak_rps: float  # the busiest calendar minute's requests per second
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


def from_usage(usage: UsageTraffic, since: float, until: float, source: str) -> Traffic:
    """Traffic from the ledger's counts of the requests answered between ``since`` and ``until``."""
    if usage.requests == 0 or usage.first_ts is None:
        raise ValueError(f"{source}: no answered requests in that window; try a longer --days")
    observed_s = max(until - max(since, usage.first_ts), MIN_OBSERVED_S)
    return Traffic(
        requests_per_day=usage.requests * DAY_S / observed_s,
        peak_rps=usage.busiest_minute / 60.0,
        prompt=Tokens.of_counts(usage.prompt_tokens),
        completion=Tokens.of_counts(usage.completion_tokens),
        source=f"{source}: {usage.requests} requests over {observed_s / DAY_S:.2f} days",
    )


async def from_ledger(db: Database, days: float, now: float) -> Traffic:
    since = now - days * DAY_S
    return from_usage(await db.usage_traffic(since, now), since, now, f"usage ledger, last {days:g} days")


def from_numbers(requests_per_day: float, peak_factor: float, prompt: Tokens, completion: Tokens,
                 source: str) -> Traffic:
    """A volume with a peak ``peak_factor`` x its mean rate."""
    if not (math.isfinite(requests_per_day) and requests_per_day > 0 and math.isfinite(peak_factor)
            and peak_factor >= 1):
        raise ValueError("--requests-per-day must be above 0 and --peak-factor at least 1.")
    return Traffic(requests_per_day, requests_per_day / DAY_S * peak_factor, prompt, completion,
                   f"{requests_per_day:,.0f} requests/day given, {source}")
