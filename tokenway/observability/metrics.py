"""Prometheus metrics: the golden signals and the LLM ones, recorded once per request.

Every metric lives in the app's own registry (no global state). With several worker
processes the CLI points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before the workers
start, values go to shared files, and a scrape of any worker aggregates all of them.
Labels are bounded: configured model and deployment names, status codes, key aliases —
never request ids or raw user ids.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
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
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tokenway_requests", "Requests answered, by outcome.",
            ["model", "deployment", "endpoint", "status_code", "stream"], registry=r,
        )
        self.duration = Histogram(
            "tokenway_request_duration_seconds", "Time from request to the last byte of the response.",
            ["model", "stream"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            "tokenway_time_to_first_token_seconds", "Time from request to the first streamed chunk, at the gateway.",
            ["model", "deployment"], buckets=TTFT_BUCKETS, registry=r,
        )
        self.itl = Histogram(
            "tokenway_inter_token_latency_seconds", "Gaps between streamed chunks, measured at the gateway.",
            ["model", "deployment"], buckets=ITL_BUCKETS, registry=r,
        )
        self.overhead = Histogram(
            "tokenway_gateway_overhead_seconds", "Time spent in tokenway itself, excluding the upstream.",
            ["endpoint"], buckets=OVERHEAD_BUCKETS, registry=r,
        )
        self.tokens = Counter(
            "tokenway_tokens", "Tokens processed.", ["model", "deployment", "type"], registry=r,
        )
        self.cost = Counter(
            "tokenway_cost_usd", "Spend in US dollars at the configured prices.", ["model", "key_alias"], registry=r,
        )
        self.in_flight = Gauge(
            "tokenway_in_flight_requests", "Requests being served now.", ["endpoint"], registry=r,
            multiprocess_mode="livesum",
        )
        self.upstream_errors = Counter(
            "tokenway_upstream_errors", "Failed backend attempts (before or during the answer), by error class.",
            ["deployment", "type"], registry=r,
        )
        self.retries = Counter(
            "tokenway_retries", "Extra attempts made on other deployments or later.", ["model"], registry=r,
        )
        self.cache_lookups = Counter(
            "tokenway_cache_lookups", "Response cache lookups.", ["model", "result"], registry=r,
        )
        self.queue_wait = Histogram(
            "tokenway_queue_wait_seconds", "Time spent in the admission queue waiting for a slot.",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.rate_limited = Counter(
            "tokenway_rate_limited", "Requests refused with 429.", ["model", "source"], registry=r,
        )
        # Live state read at scrape time (breakers, queues, worker load): this process's own view.
        self._live = CollectorRegistry()

    def close(self) -> None:
        """Drop this process's live gauges from the shared files (multiprocess mode)."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())

    def upstream_attempt_failed(self, deployment: str, error: Exception) -> None:
        self.upstream_errors.labels(deployment, type(error).__name__).inc()

    def add_collector(self, collector: Any) -> None:
        """Export live state read at scrape time; ``collector.collect()`` yields metric families."""
        self._live.register(collector)

    def request_started(self, endpoint: str) -> None:
        self.in_flight.labels(endpoint).inc()

    def request_finished(self, ctx: RequestContext, end: float) -> None:
        model = ctx.model or "none"
        deployment = ctx.deployment or "none"
        stream = "true" if ctx.stream else "false"
        self.in_flight.labels(ctx.endpoint).dec()
        self.requests.labels(model, deployment, ctx.endpoint, str(ctx.status), stream).inc()
        self.duration.labels(model, stream).observe(end - ctx.started)
        if ctx.first_token_at is not None:
            self.ttft.labels(model, deployment).observe(ctx.first_token_at - ctx.started)
        if ctx.chunk_gaps:
            itl = self.itl.labels(model, deployment)
            for gap in ctx.chunk_gaps:
                itl.observe(gap)
        overhead = ctx.overhead(end)
        if overhead is not None:
            self.overhead.labels(ctx.endpoint).observe(overhead)
        queue_wait = ctx.extra.get("queue_wait_s")
        if queue_wait is not None:
            self.queue_wait.labels(model).observe(queue_wait)
        if ctx.attempts > 1:
            self.retries.labels(model).inc(ctx.attempts - 1)
        cache = ctx.extra.get("cache")
        if cache:
            self.cache_lookups.labels(model, cache).inc()
        usage = ctx.usage
        if usage is not None and cache != "hit":
            self.tokens.labels(model, deployment, "prompt").inc(usage.prompt_tokens)
            self.tokens.labels(model, deployment, "completion").inc(usage.completion_tokens)
            if usage.cached_tokens:
                self.tokens.labels(model, deployment, "cached").inc(usage.cached_tokens)
            target = ctx.target
            if target is not None:
                price = target.config.price
                spend = (usage.prompt_tokens * price.input_per_1m + usage.completion_tokens * price.output_per_1m) / 1e6
                if spend:
                    self.cost.labels(model, ctx.key_alias or "anonymous").inc(spend)
        error = ctx.error_type
        if error in _UPSTREAM_ERRORS and ctx.extra.get("failed_mid_stream"):
            self.upstream_errors.labels(deployment, error).inc()  # attempts that failed earlier are counted there
        if ctx.status == 429:
            self.rate_limited.labels(model, "upstream" if error in _UPSTREAM_ERRORS else "gateway").inc()

    def render(self) -> bytes:
        """The exposition text: this process's registry, or every worker's when multiprocess."""
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            text = generate_latest(registry)
        else:
            text = generate_latest(self.registry)
        return text + generate_latest(self._live)
