"""Prometheus metrics: the golden signals and the LLM ones, recorded once per request.

Every metric lives in the app's own registry (no global state), as prometheus-client's own
classes. With several worker processes the CLI points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
folder before the workers start, values go to prometheus-client's shared files, and a scrape of
any worker aggregates all of them. Labels are bounded: configured model and deployment names,
status codes, key aliases — never request ids or raw user ids.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from tokenway.context import RequestContext

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2, 5, 10, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5)
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

_UPSTREAM_ERRORS = {"UpstreamError", "UpstreamTimeout", "UpstreamUnavailable", "UpstreamRejected"}


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "tokenway_requests", "Requests answered, by outcome.",
            ["model", "deployment", "endpoint", "status_code", "stream"], registry=registry,
        )
        self.duration = Histogram(
            "tokenway_request_duration_seconds", "Time from request to the last byte of the response.",
            ["model", "stream"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.ttft = Histogram(
            "tokenway_time_to_first_token_seconds", "Time from request to the first streamed chunk, at the gateway.",
            ["model", "deployment"], buckets=TTFT_BUCKETS, registry=registry,
        )
        self.itl = Histogram(
            "tokenway_inter_token_latency_seconds", "Gaps between streamed chunks, measured at the gateway.",
            ["model", "deployment"], buckets=ITL_BUCKETS, registry=registry,
        )
        self.overhead = Histogram(
            "tokenway_gateway_overhead_seconds", "Time spent in tokenway itself, excluding the upstream.",
            ["endpoint"], buckets=OVERHEAD_BUCKETS, registry=registry,
        )
        self.tokens = Counter(
            "tokenway_tokens", "Tokens processed.", ["model", "deployment", "type"], registry=registry,
        )
        self.cost = Counter(
            "tokenway_cost_usd", "Spend in US dollars at the configured prices.", ["model", "key_alias"],
            registry=registry,
        )
        # With several workers, one that exits takes its in-flight count with it.
        self.in_flight = Gauge(
            "tokenway_in_flight_requests", "Requests being served now.", ["endpoint"], registry=registry,
            multiprocess_mode="livesum",
        )
        self.upstream_errors = Counter(
            "tokenway_upstream_errors", "Failed backend attempts (before or during the answer), by error class.",
            ["deployment", "type"], registry=registry,
        )
        self.retries = Counter(
            "tokenway_retries", "Extra attempts made on other deployments or later.", ["model"], registry=registry,
        )
        self.cache_lookups = Counter(
            "tokenway_cache_lookups", "Response cache lookups.", ["model", "result"], registry=registry,
        )
        self.queue_wait = Histogram(
            "tokenway_queue_wait_seconds", "Time spent in the admission queue waiting for a slot.",
            ["model"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.rate_limited = Counter(
            "tokenway_rate_limited", "Requests refused with 429.", ["model", "source"], registry=registry,
        )
        # Replies that broke the JSON, schema or tool declarations asked for, and the extra calls made to
        # fix them (tokenway/policies/structured_output.py). kind: json, schema, empty, tool_name, tool_arguments.
        self.structured_output_failures = Counter(
            "tokenway_structured_output_failures", "Replies that failed structured-output validation.",
            ["model", "kind"], registry=registry,
        )
        self.structured_output_retries = Counter(
            "tokenway_structured_output_retries", "Upstream calls made again after an invalid structured reply.",
            ["model"], registry=registry,
        )
        # Guards (tokenway/guards/policy.py): one per request and (guard, stage, action). The labels are
        # configured names only, never the matched text or a key.
        self.guard_actions = Counter(
            "tokenway_guard_actions", "Guard actions taken (block, mask, flag), by guard and stage (input, output).",
            ["guard", "stage", "action", "model"], registry=registry,
        )
        # Conversations too long for the model's window (tokenway/policies/context_window.py), by what was done:
        # strategy reject, trim or summarize; and the prompt tokens that shaping took out of them.
        self.context_shaped = Counter(
            "tokenway_context_shaped", "Requests whose conversation exceeded the model's context window.",
            ["model", "strategy"], registry=registry,
        )
        self.context_tokens_removed = Counter(
            "tokenway_context_tokens_removed", "Prompt tokens removed by trimming or summarising.",
            ["model", "strategy"], registry=registry,
        )
        # Prompt versions (tokenway/prompts/policy.py): requests per version, to watch one after activating it.
        self.prompt_requests = Counter(
            "tokenway_prompt_requests", "Requests that ran with a prompt version, by prompt, version and status.",
            ["prompt", "version", "model", "status_code"], registry=registry,
        )
        # Small-model routing (tokenway/tiers/policy.py): reason is score, override or escalated:<check>.
        self.tier_decisions = Counter(
            "tokenway_tier_decisions", "Routed requests, by router, the tier that served them and why.",
            ["router", "tier", "reason"], registry=registry,
        )
        self.tier_escalations = Counter(
            "tokenway_tier_escalations", "Answers dropped for the next tier, by the tier and the check they failed.",
            ["router", "tier", "check"], registry=registry,
        )
        # (name, help, type) of every family above, declared on /metrics before first use (see render)
        self._declared = [(family.name, family.documentation, family.type) for family in registry.collect()]
        # Live state read at scrape time (breakers, queues, worker load): this process's own view.
        self._live = CollectorRegistry()
        self._by_labels: dict[tuple[str, str, str, bool], _Series] = {}
        self._in_flight_children: dict[str, Any] = {}

    def close(self) -> None:
        """Drop this process's live gauges from the shared files (multiprocess mode)."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())

    def upstream_attempt_failed(self, deployment: str, error: Exception) -> None:
        self.upstream_errors.labels(deployment, type(error).__name__).inc()

    def guard_acted(self, guard: str, stage: str, action: str, model: str) -> None:
        self.guard_actions.labels(guard, stage, action, model).inc()

    def add_collector(self, collector: Any) -> None:
        """Export live state read at scrape time; ``collector.collect()`` yields metric families."""
        self._live.register(collector)

    def request_started(self, endpoint: str) -> None:
        self._in_flight(endpoint).inc()

    def request_finished(self, ctx: RequestContext, end: float) -> None:
        series = self._series(ctx.model or "none", ctx.deployment or "none", ctx.endpoint, ctx.stream)
        self._in_flight(ctx.endpoint).dec()
        series.requests(ctx.status).inc()
        series.duration.observe(end - ctx.started)
        if ctx.first_token_at is not None:
            series.ttft.observe(ctx.first_token_at - ctx.started)
        for gap in ctx.chunk_gaps:
            series.itl.observe(gap)
        overhead = ctx.overhead(end)
        if overhead is not None:
            series.overhead.observe(overhead)
        self._occasional(ctx, series)
        usage = ctx.usage
        if usage is not None and (ctx.cache is None or ctx.cache.status != "hit"):
            series.prompt_tokens.inc(usage.prompt_tokens)
            series.completion_tokens.inc(usage.completion_tokens)
            if usage.cached_tokens:
                series.cached_tokens.inc(usage.cached_tokens)
            if ctx.cost_nanos:  # what the access policy charged in the ledger, shipped price table included
                series.cost(ctx.key_alias or "anonymous").inc(ctx.cost_nanos / 1e9)
        if ctx.status == 429:
            upstream = ctx.error_type in _UPSTREAM_ERRORS
            self.rate_limited.labels(series.model, "upstream" if upstream else "gateway").inc()

    def _occasional(self, ctx: RequestContext, series: _Series) -> None:
        """What only some requests have: queueing, retries, a cache verdict, a mid-stream failure."""
        queue_wait = ctx.queue_wait_s
        if queue_wait is not None:
            self.queue_wait.labels(series.model).observe(queue_wait)
        if ctx.attempts > 1:
            self.retries.labels(series.model).inc(ctx.attempts - 1)
        if ctx.cache is not None:
            series.cache_lookups(ctx.cache.status).inc()
        if ctx.error_type in _UPSTREAM_ERRORS and ctx.failed_mid_stream:
            # attempts that failed before the answer started are counted by upstream_attempt_failed
            self.upstream_errors.labels(series.deployment, ctx.error_type).inc()

    def _in_flight(self, endpoint: str) -> Any:
        child = self._in_flight_children.get(endpoint)
        if child is None:
            child = self._in_flight_children[endpoint] = self.in_flight.labels(endpoint)
        return child

    def _series(self, model: str, deployment: str, endpoint: str, stream: bool) -> _Series:
        # labels() takes a lock and checks every value on each call: each label set is resolved once
        # (benchmarks/ab/RESULTS.md).
        key = (model, deployment, endpoint, stream)
        series = self._by_labels.get(key)
        if series is None:
            series = self._by_labels[key] = _Series(self, model, deployment, endpoint, stream)
        return series

    def families(self) -> list[Metric]:
        """The per-request families as collected now: this process's, or every worker's when multiprocess
        (what ``/metrics`` shows, and what the console's overview reads without Prometheus)."""
        if not self.multiprocess:
            return list(self.registry.collect())
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        found = list(registry.collect())
        names = {family.name for family in found}
        # The shared files hold a labelled family only once some worker has used one of its label
        # sets: declare the others empty, as one process does, so that a family nobody observed yet
        # (the queue wait before the first queued call) reads as zero rather than "no data".
        return found + [Metric(*declared) for declared in self._declared if declared[0] not in names]

    def render(self) -> bytes:
        """The exposition text: this process's registry, or every worker's when multiprocess."""
        shown = CollectorRegistry()
        shown.register(_Families(self.families()))
        return generate_latest(shown) + generate_latest(self._live)


class _Families:
    """Metric families already collected, as a collector ``generate_latest`` can write."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


class _Series:
    """The labelled children one kind of request updates, from ``labels()`` once per label set."""

    __slots__ = (
        "_cache",
        "_cost",
        "_metrics",
        "_requests",
        "cached_tokens",
        "completion_tokens",
        "deployment",
        "duration",
        "endpoint",
        "itl",
        "model",
        "overhead",
        "prompt_tokens",
        "stream",
        "ttft",
    )

    def __init__(self, metrics: Metrics, model: str, deployment: str, endpoint: str, stream: bool) -> None:
        self._metrics = metrics
        self.model, self.deployment, self.endpoint = model, deployment, endpoint
        self.stream = "true" if stream else "false"
        self._requests: dict[int, Any] = {}
        self._cost: dict[str, Any] = {}
        self._cache: dict[str, Any] = {}
        self.duration = metrics.duration.labels(model, self.stream)
        self.ttft = metrics.ttft.labels(model, deployment)
        self.itl = metrics.itl.labels(model, deployment)
        self.overhead = metrics.overhead.labels(endpoint)
        self.prompt_tokens = metrics.tokens.labels(model, deployment, "prompt")
        self.completion_tokens = metrics.tokens.labels(model, deployment, "completion")
        self.cached_tokens = metrics.tokens.labels(model, deployment, "cached")

    def cost(self, key_alias: str) -> Any:
        child = self._cost.get(key_alias)
        if child is None:
            child = self._cost[key_alias] = self._metrics.cost.labels(self.model, key_alias)
        return child

    def cache_lookups(self, result: str) -> Any:
        child = self._cache.get(result)
        if child is None:
            child = self._cache[result] = self._metrics.cache_lookups.labels(self.model, result)
        return child

    def requests(self, status: int) -> Any:
        child = self._requests.get(status)
        if child is None:
            child = self._requests[status] = self._metrics.requests.labels(
                self.model, self.deployment, self.endpoint, str(status), self.stream
            )
        return child
