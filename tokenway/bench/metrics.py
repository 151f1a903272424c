"""Aggregate metrics for a run, with vLLM `bench serve` definitions (printed next to results)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tokenway.bench.loadgen import RunResult
from tokenway.bench.records import RequestRecord

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)

DEFINITIONS = {
    "ttft": "time to first token: arrival of the first event carrying a token (content, reasoning "
    "or tool-call delta) minus send time",
    "tpot": "time per output token, per request: (E2EL - TTFT) / (output tokens - 1), requests with >= 2",
    "itl": "inter-token latency: gaps between token-carrying events, pooled over requests; an event "
    "carrying k tokens counts as k gaps of gap/k",
    "e2el": "end-to-end latency: arrival of the last data event minus send time",
    "throughput": "completed requests and output tokens divided by the run's wall time "
    "(first measured send to last measured response)",
    "goodput": "requests/s that met every SLO given with --goodput",
    "timestamps": "taken when bytes arrive, before any parsing (time.perf_counter)",
}


def percentile(sorted_values: list[float], p: float) -> float:
    """Linear-interpolation percentile (numpy's default), on an already sorted list."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * p / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def describe(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    """count, mean, std (population, as numpy), min, max and percentiles; scaled (s -> ms)."""
    vals = sorted(v * scale for v in values)
    n = len(vals)
    if n == 0:
        return {"count": 0}
    mean = math.fsum(vals) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / n)
    out = {"count": n, "mean": mean, "std": std, "min": vals[0], "max": vals[-1]}
    for p in PERCENTILES:
        out[f"p{p:g}"] = percentile(vals, p)
    return out


@dataclass(frozen=True)
class SLO:
    """Service-level objectives in milliseconds, from `ttft:500 tpot:50 e2el:2000`."""

    limits: tuple[tuple[str, float], ...]

    @classmethod
    def parse(cls, items: list[str]) -> SLO:
        limits = []
        for item in items:
            for part in item.replace(",", " ").split():
                name, sep, value = part.partition(":")
                if not sep or name not in ("ttft", "tpot", "e2el"):
                    raise ValueError(f"goodput SLO {part!r}: expected ttft:MS, tpot:MS or e2el:MS")
                limits.append((name, float(value)))
        return cls(tuple(limits))

    def met(self, rec: RequestRecord) -> bool:
        for name, limit_ms in self.limits:
            value = {"ttft": rec.ttft, "tpot": rec.tpot, "e2el": rec.e2el}[name]
            # A request too short to have a TPOT cannot violate the TPOT objective.
            if value is None and name == "tpot" and rec.ok:
                continue
            if value is None or value * 1000.0 > limit_ms:
                return False
        return True


def concurrency_profile(records: list[RequestRecord], start: float, end: float) -> tuple[int, float]:
    """(peak, time-weighted mean) number of requests in flight within [start, end]."""
    edges = sorted([(r.start, 1) for r in records] + [(r.end, -1) for r in records])
    level = 0
    peak = sum(1 for r in records if r.start <= start < r.end)
    area = 0.0
    prev = start
    for t, step in edges:
        clipped = min(max(t, start), end)
        area += level * (clipped - prev)
        prev = clipped
        level += step
        if start <= t <= end:
            peak = max(peak, level)
    span = end - start
    return peak, (area / span if span > 0 else 0.0)


def timeline(records: list[RequestRecord], start: float, end: float, bucket_s: float = 1.0) -> dict[str, list[float]]:
    """Per-bucket output tokens/s and completed requests/s, for the throughput-over-time plot."""
    n = max(1, math.ceil((end - start) / bucket_s))
    tokens = [0.0] * n
    done = [0.0] * n
    for r in records:
        for t, k in zip(r.token_times, r.event_tokens, strict=False):
            i = int((t - start) / bucket_s)
            if 0 <= i < n:
                tokens[i] += k
        i = int((r.end - start) / bucket_s)
        if r.ok and 0 <= i < n:
            done[i] += 1
    return {
        "t": [i * bucket_s for i in range(n)],
        "output_tok_s": [x / bucket_s for x in tokens],
        "req_s": [x / bucket_s for x in done],
    }


def summarize(result: RunResult, slo: SLO | None = None) -> dict[str, Any]:
    """All aggregate numbers of one run (latencies in ms, rates per second)."""
    measured = [r for r in result.records if not r.warmup]
    ok = [r for r in measured if r.ok]
    duration = max(result.measure_end - result.measure_start, 1e-9)
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.input_tokens or 0 for r in ok)
    itls = [g for r in ok for g in r.itls()]
    peak, mean_conc = concurrency_profile(result.records, result.measure_start, result.measure_end)
    sources = Counter(r.output_source for r in ok)
    summary: dict[str, Any] = {
        "label": result.shape.label,
        "duration_s": duration,
        "requests": {
            "measured": len(measured),
            "completed": len(ok),
            "failed": len(measured) - len(ok),
            "warmup": len(result.records) - len(measured),
        },
        "errors": dict(Counter(r.error for r in measured if r.error)),
        "error_rate": (len(measured) - len(ok)) / len(measured) if measured else 0.0,
        "request_throughput": len(ok) / duration,
        "output_throughput": out_tokens / duration,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
        "output_tokens": out_tokens,
        "input_tokens": in_tokens,
        "output_token_source": dict(sources),
        "concurrency": {"peak": peak, "mean": mean_conc},
        "ttft_ms": describe([r.ttft for r in ok if r.ttft is not None]),
        "tpot_ms": describe([t for r in ok if (t := r.tpot) is not None]),
        "itl_ms": describe(itls),
        "e2el_ms": describe([r.e2el for r in ok if r.e2el is not None]),
        "timeline": timeline(ok, result.measure_start, result.measure_end),
    }
    if result.shape.rate is not None:
        lags = [r.start - r.scheduled for r in measured if r.scheduled is not None]
        summary["schedule_lag_ms"] = describe(lags)
        # What a user arriving on schedule saw: latency counted from the intended send time.
        # Equal to TTFT/E2EL when the client kept to its schedule; the gap is coordinated omission.
        ttft_late, e2el_late = [], []
        for r in ok:
            if r.scheduled is not None and r.ttft is not None and r.e2el is not None:
                ttft_late.append(r.ttft + r.start - r.scheduled)
                e2el_late.append(r.e2el + r.start - r.scheduled)
        summary["ttft_from_schedule_ms"] = describe(ttft_late)
        summary["e2el_from_schedule_ms"] = describe(e2el_late)
        summary["offered_rate"] = result.shape.rate if not math.isinf(result.shape.rate) else None
    if slo and slo.limits:
        good = sum(1 for r in ok if slo.met(r))
        summary["goodput"] = {
            "slo_ms": dict(slo.limits),
            "requests": good,
            "req_s": good / duration,
            "share": good / len(measured) if measured else 0.0,
        }
    return summary
