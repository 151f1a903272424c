"""What recording one request's metrics costs, in process: the gateway's own metric families against
prometheus-client's classes, for the same updates a JSON request makes.

    python benchmarks/gateway_overhead/metrics_cost.py [--requests 200000] [--rounds 5]

A JSON request makes eight updates: in-flight up and down, the request count, its duration and
its overhead (histograms), prompt and completion tokens, and its cost. Printed: µs per request for
``Metrics.request_finished`` as the gateway runs it (one process), and for the same eight updates
on ``tokenway.observability.families`` children and on prometheus-client children (what the
gateway used before, and still uses with several workers). Medians over rounds, alternated.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tokenway.context import RequestContext
from tokenway.observability.families import Family
from tokenway.observability.metrics import LATENCY_BUCKETS, OVERHEAD_BUCKETS, Metrics
from tokenway.protocol import Usage


def gateway_metrics() -> Callable[[], None]:
    metrics = Metrics()

    def one() -> None:
        ctx = RequestContext("r", "chat")
        ctx.model, ctx.deployment, ctx.usage = "mock-json", "mock-json#0", Usage(12, 20)
        ctx.extra["cost_nanos"] = 14_000
        ctx.upstream_started, ctx.upstream_done = ctx.started + 0.0001, ctx.started + 0.0002
        metrics.request_started("chat")
        metrics.request_finished(ctx, time.perf_counter())
    return one


def eight_updates(counter: Callable[..., object], gauge: Callable[..., object],
                  histogram: Callable[..., object]) -> Callable[[], None]:
    requests, tokens, cost = counter("t_requests", 2), counter("t_tokens", 2), counter("t_cost", 1)
    duration, overhead = histogram("t_duration", LATENCY_BUCKETS), histogram("t_overhead", OVERHEAD_BUCKETS)
    in_flight = gauge("t_in_flight")

    def one() -> None:
        in_flight.inc()
        in_flight.dec()
        requests.inc()
        duration.observe(0.0021)
        overhead.observe(0.00031)
        tokens.inc(12)
        tokens.inc(20)
        cost.inc(0.000014)
    return one


def families() -> Callable[[], None]:
    def counter(name: str, _: int) -> object:
        return Family("counter", name, "x", ["a"]).labels("v")

    def histogram(name: str, buckets: tuple[float, ...]) -> object:
        return Family("histogram", name, "x", ["a"], buckets).labels("v")
    return eight_updates(counter, lambda name: Family("gauge", name, "x", ["a"]).labels("v"), histogram)


def prometheus_client() -> Callable[[], None]:
    registry = CollectorRegistry()

    def counter(name: str, _: int) -> object:
        return Counter(name, "x", ["a"], registry=registry).labels("v")

    def histogram(name: str, buckets: tuple[float, ...]) -> object:
        return Histogram(name, "x", ["a"], buckets=buckets, registry=registry).labels("v")
    return eight_updates(counter, lambda name: Gauge(name, "x", ["a"], registry=registry).labels("v"), histogram)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cases = {"Metrics.request_finished (gateway, one process)": gateway_metrics(),
             "8 updates, tokenway families": families(), "8 updates, prometheus-client": prometheus_client()}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, one in cases.items():
            start = time.perf_counter()
            for _ in range(args.requests):
                one()
            times[name].append((time.perf_counter() - start) / args.requests * 1e6)
    for name, values in times.items():
        print(f"{name:50s} median {statistics.median(values):5.2f} µs/request  min {min(values):5.2f}")


if __name__ == "__main__":
    main()
