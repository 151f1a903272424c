"""What each version of a released model, and its shadow, did: side by side, per process.

Read by ``GET /admin/releases`` and ``tokenway releases``, and by Prometheus at scrape time (no
bookkeeping on the request path beyond adding a few numbers once a request has ended). It lives
for the whole process, so the numbers go on across config reloads. With ``--workers N`` each
worker keeps its own: an answer shows the worker that gave it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client.core import CounterMetricFamily, Metric

from tokenway.protocol import Usage

Role = Literal["primary", "shadow"]
_LATENCY_SAMPLES = 2048  # the newest latencies kept per side, for its percentiles


@dataclass(slots=True)
class Side:
    """One version's primary traffic, or the shadow copies sent to a candidate."""

    model: str  # the configured model that served it
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_nanos: int = 0
    latency_s_total: float = 0.0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_SAMPLES))

    def add(self, latency_s: float, usage: Usage | None, cost_nanos: int, failed: bool) -> None:
        self.requests += 1
        self.errors += failed
        self.latency_s_total += latency_s
        self.latencies.append(latency_s)
        if usage is not None:
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens
        self.cost_nanos += cost_nanos

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        answered = self.requests - self.errors

        def percentile(share: float) -> float | None:
            return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000, 3) if ordered else None

        return {
            "model": self.model, "requests": self.requests, "errors": self.errors,
            "error_rate": round(self.errors / self.requests, 4) if self.requests else None,
            "latency_ms": {"p50": percentile(0.5), "p95": percentile(0.95), "p99": percentile(0.99)},
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "output_tokens_avg": round(self.completion_tokens / answered, 2) if answered else None,
            "cost_usd": round(self.cost_nanos / 1e9, 9),
        }


class ReleaseRecord:
    """Every released model's sides, the shadow tasks in flight, and the copies skipped at the bound."""

    def __init__(self) -> None:
        self._sides: dict[tuple[str, str, Role], Side] = {}  # (released model, version, role)
        self.skipped: dict[str, int] = {}  # released model -> shadow copies not sent (bound reached)
        self.shadows: set[asyncio.Task[None]] = set()

    def side(self, released: str, version: str, role: Role, model: str) -> Side:
        key = (released, version, role)
        side = self._sides.get(key)
        if side is None or side.model != model:  # a reload pointed the version at another model: start over
            side = self._sides[key] = Side(model)
        return side

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (released, version, role), side in sorted(self._sides.items()):
            entry = out.setdefault(released, {"versions": {}, "shadow": {}, "shadows_skipped": 0})
            entry["versions" if role == "primary" else "shadow"][version] = side.summary()
        for released, skipped in self.skipped.items():
            out.setdefault(released, {"versions": {}, "shadow": {}, "shadows_skipped": 0})["shadows_skipped"] = skipped
        return {"models": out, "shadows_in_flight": len(self.shadows)}

    def collect(self) -> Iterable[Metric]:
        """Prometheus families, by released model, version and role (a prometheus-client collector)."""
        labels = ["model", "version", "role"]
        requests = CounterMetricFamily("tokenway_release_requests", "Requests per release version.", labels=labels)
        errors = CounterMetricFamily("tokenway_release_errors", "Failed requests per release version.", labels=labels)
        latency = CounterMetricFamily("tokenway_release_latency_seconds",
                                      "Seconds spent answering, summed, per release version.", labels=labels)
        tokens = CounterMetricFamily("tokenway_release_tokens", "Tokens per release version.",
                                     labels=[*labels, "type"])
        cost = CounterMetricFamily("tokenway_release_cost_usd", "Cost per release version.", labels=labels)
        for (released, version, role), side in self._sides.items():
            values = [released, version, role]
            requests.add_metric(values, side.requests)
            errors.add_metric(values, side.errors)
            latency.add_metric(values, side.latency_s_total)
            tokens.add_metric([*values, "prompt"], side.prompt_tokens)
            tokens.add_metric([*values, "completion"], side.completion_tokens)
            cost.add_metric(values, side.cost_nanos / 1e9)
        return [requests, errors, latency, tokens, cost]

    async def aclose(self) -> None:
        for task in self.shadows:
            task.cancel()
        await asyncio.gather(*self.shadows, return_exceptions=True)
