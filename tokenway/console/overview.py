"""``GET /admin/overview``: the gateway's live numbers in one snapshot, read from its own state.

The counters come from the process's Prometheus families (``Metrics.families``), so the console
works without a Prometheus server; deployments from the model table, spend today from the usage
ledger. Everything is cumulative: the page turns two snapshots into rates (requests/s, tokens/s)
and the TTFT buckets' differences into p50/p95 over the last interval.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from prometheus_client.metrics_core import Metric

from tokenway.deployments import ModelTable
from tokenway.observability.metrics import Metrics

_NUMBER = {"type": "number"}
_COUNTERS = {"type": "object", "required": [
    "requests", "errors", "rejected", "prompt_tokens", "completion_tokens", "cost_usd", "cache", "ttft_buckets"],
    "properties": {**{name: _NUMBER for name in ("requests", "errors", "rejected", "prompt_tokens",
                                                 "completion_tokens", "cost_usd")},
                   "cache": {"type": "object", "additionalProperties": _NUMBER},
                   "ttft_buckets": {"type": "array", "items": {  # [upper bound (null: +inf), cumulative count]
                       "type": "array", "minItems": 2, "maxItems": 2,
                       "items": {"anyOf": [_NUMBER, {"type": "null"}]}}}}}
# The answer's shape, for the OpenAPI document (what the console's pages and scripts may rely on).
OVERVIEW_SCHEMA = {"type": "object", "title": "Overview", "required": [
    "time", "metrics", "models", "in_flight", "spend_today", "deployments", "prices"], "properties": {
    "time": _NUMBER, "metrics": {"type": "boolean"},
    "models": {"type": "object", "additionalProperties": _COUNTERS},
    "in_flight": _NUMBER,
    "spend_today": {"type": "object", "required": ["since", "usd", "by_model"], "properties": {
        "since": _NUMBER, "usd": _NUMBER, "by_model": {"type": "object", "additionalProperties": _NUMBER}}},
    "deployments": {"type": "object", "required": ["total", "healthy", "breakers_open"], "properties": {
        "total": {"type": "integer"}, "healthy": {"type": "integer"}, "breakers_open": {"type": "integer"}}},
    "prices": {"type": "object", "additionalProperties": {
        "type": "array", "minItems": 2, "maxItems": 2, "items": _NUMBER}}}}

SpendToday = Callable[[float], Awaitable[list[dict[str, Any]]]]  # since (unix s) -> ledger rows by model


def day_start(now: float) -> float:
    """Midnight UTC of ``now``'s day, where daily budgets start too."""
    return now - now % 86400


class _Model:
    """Cumulative counters of one model."""

    def __init__(self) -> None:
        self.requests = 0.0
        self.errors = 0.0  # answered 5xx: the gateway or a backend failed
        self.rejected = 0.0  # answered 4xx: refused (auth, limits, bad requests)
        self.prompt_tokens = 0.0
        self.completion_tokens = 0.0
        self.cost_usd = 0.0
        self.cache: dict[str, float] = {}
        self.ttft: dict[float, float] = {}  # bucket upper bound -> cumulative count

    def view(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "errors": self.errors, "rejected": self.rejected,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd, "cache": self.cache,
            # JSON has no infinity: the last bucket's bound is null
            "ttft_buckets": [[None if math.isinf(le) else le, n] for le, n in sorted(self.ttft.items())],
        }


def counters(families: Iterable[Metric]) -> dict[str, dict[str, Any]]:
    """Per model (and ``"*"`` for all): requests, errors, tokens, cost, cache verdicts, TTFT buckets."""
    models: dict[str, _Model] = {}
    everything = _Model()

    def of(name: str) -> list[_Model]:
        if name not in models:
            models[name] = _Model()
        return [models[name], everything]

    for family in families:
        for sample in family.samples:
            labels, value = sample.labels, sample.value
            if sample.name == "tokenway_requests_total":
                status = int(labels["status_code"])
                for m in of(labels["model"]):
                    m.requests += value
                    m.errors += value if status >= 500 else 0
                    m.rejected += value if 400 <= status < 500 else 0
            elif sample.name == "tokenway_tokens_total" and labels["type"] == "prompt":
                for m in of(labels["model"]):
                    m.prompt_tokens += value
            elif sample.name == "tokenway_tokens_total" and labels["type"] == "completion":
                for m in of(labels["model"]):
                    m.completion_tokens += value
            elif sample.name == "tokenway_cost_usd_total":
                for m in of(labels["model"]):
                    m.cost_usd += value
            elif sample.name == "tokenway_cache_lookups_total":
                for m in of(labels["model"]):
                    m.cache[labels["result"]] = m.cache.get(labels["result"], 0.0) + value
            elif sample.name == "tokenway_time_to_first_token_seconds_bucket":
                le = float(labels["le"])
                for m in of(labels["model"]):
                    m.ttft[le] = m.ttft.get(le, 0.0) + value
    return {"*": everything.view(), **{name: m.view() for name, m in sorted(models.items())}}


async def overview(metrics: Metrics | None, models: ModelTable, spend_today: SpendToday,
                   now: float | None = None) -> dict[str, Any]:
    """The snapshot ``/admin/overview`` answers."""
    now = time.time() if now is None else now
    spend = await spend_today(day_start(now))
    families = metrics.families() if metrics is not None else []
    in_flight = sum(s.value for f in families if f.name == "tokenway_in_flight_requests" for s in f.samples)
    deployments = models.all()
    return {
        "time": now,
        "metrics": metrics is not None,  # off: observability.metrics is false, only live state and spend
        "models": counters(families),
        "in_flight": in_flight,
        "spend_today": {
            "since": day_start(now),
            "usd": sum(row["cost_usd"] for row in spend),
            "by_model": {row["model"]: row["cost_usd"] for row in spend},
        },
        "deployments": {
            "total": len(deployments),
            "healthy": sum(1 for d in deployments if d.healthy),
            "breakers_open": sum(1 for d in deployments if d.breaker.state != "closed"),
        },
        # USD per 1M tokens (input, output) per deployment: the playground prices a reply it streamed
        "prices": {d.name: [d.rates.per_input / 1e9, d.rates.per_output / 1e9] for d in deployments},
    }
