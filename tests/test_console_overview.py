"""``/admin/overview``'s counters, in process: what the overview page turns into rates and quantiles."""

from __future__ import annotations

from tokenway.console.overview import counters, day_start, overview
from tokenway.deployments import ModelTable
from tokenway.observability.metrics import Metrics


def test_counters_split_errors_from_refusals_and_sum_every_model() -> None:
    metrics = Metrics()
    for model, status, n in [("a", "200", 7), ("a", "502", 2), ("a", "429", 1), ("b", "200", 3), ("b", "401", 4)]:
        metrics.requests.labels(model, f"{model}#0", "chat", status, "true").inc(n)
    metrics.tokens.labels("a", "a#0", "prompt").inc(70)
    metrics.tokens.labels("a", "a#0", "completion").inc(40)
    metrics.tokens.labels("b", "b#0", "cached").inc(5)  # cached tokens are part of the prompt: not counted again
    metrics.cost.labels("a", "team-key").inc(0.25)
    metrics.cache_lookups.labels("b", "hit").inc(2)
    metrics.cache_lookups.labels("b", "miss").inc(1)
    for seconds in (0.02, 0.02, 0.3):
        metrics.ttft.labels("a", "a#0").observe(seconds)

    found = counters(metrics.families())

    a, b, everything = found["a"], found["b"], found["*"]
    assert (a["requests"], a["errors"], a["rejected"]) == (10, 2, 1)
    assert (b["requests"], b["errors"], b["rejected"]) == (7, 0, 4)
    assert (everything["requests"], everything["errors"], everything["rejected"]) == (17, 2, 5)
    assert (a["prompt_tokens"], a["completion_tokens"], a["cost_usd"]) == (70, 40, 0.25)
    assert b["prompt_tokens"] == 0 and b["cache"] == {"hit": 2, "miss": 1} == everything["cache"]
    buckets = dict((le, n) for le, n in a["ttft_buckets"])
    assert buckets[0.01] == 0 and buckets[0.025] == 2 and buckets[0.5] == 3 and buckets[None] == 3
    assert [le for le, _ in a["ttft_buckets"]][-1] is None  # +Inf, which JSON cannot carry
    assert b["ttft_buckets"] == []


async def test_a_gateway_without_metrics_still_reports_spend_and_health() -> None:
    async def spend(since: float) -> list[dict[str, object]]:
        assert since == day_start(90_000.0) == 86_400.0
        return [{"model": "a", "cost_usd": 0.5}, {"model": "b", "cost_usd": 0.25}]

    snapshot = await overview(None, ModelTable({}), spend, now=90_000.0)
    assert snapshot["metrics"] is False and list(snapshot["models"]) == ["*"]
    assert snapshot["models"]["*"]["requests"] == 0 and snapshot["in_flight"] == 0
    assert snapshot["spend_today"] == {"since": 86_400.0, "usd": 0.75, "by_model": {"a": 0.5, "b": 0.25}}
    assert snapshot["deployments"] == {"total": 0, "healthy": 0, "breakers_open": 0}
