"""Live routing state as Prometheus families, read at scrape time (no bookkeeping per request).

Breakers, queues, health verdicts and scraped worker load belong to each worker process
(every process routes on its own view), so with several workers each scrape shows the state
of the process that answered it; the per-request counters are the ones summed across workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from tokenway.deployments import ModelTable
from tokenway.routing.stats import RoutingStats

CIRCUIT_STATES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class LiveState:
    """A prometheus-client collector over the app's deployments, queues and routing counters."""

    def __init__(
        self, models: Callable[[], ModelTable], routing: RoutingStats, queue_lengths: Callable[[], dict[str, int]],
        store_failures: Callable[[], int],
    ) -> None:
        self._models = models  # the table serving now: a config reload replaces it
        self._routing = routing
        self._queue_lengths = queue_lengths
        self._store_failures = store_failures

    def collect(self) -> Iterable[Metric]:
        in_flight = GaugeMetricFamily("tokenway_deployment_in_flight", "Calls in flight per deployment.",
                                      labels=["deployment"])
        circuit = GaugeMetricFamily("tokenway_deployment_circuit_state",
                                    "Circuit breaker state: 0 closed, 1 half-open, 2 open.", labels=["deployment"])
        healthy = GaugeMetricFamily("tokenway_deployment_healthy", "Active health check verdict (1 healthy).",
                                    labels=["deployment"])
        waiting = GaugeMetricFamily("tokenway_worker_queue_length",
                                    "Requests waiting inside the worker (vLLM/SGLang /metrics).", labels=["deployment"])
        running = GaugeMetricFamily("tokenway_worker_running_requests",
                                    "Requests running inside the worker (vLLM/SGLang /metrics).", labels=["deployment"])
        kv_usage = GaugeMetricFamily("tokenway_worker_kv_cache_usage_ratio",
                                     "KV-cache use of the worker, 0..1 (vLLM/SGLang /metrics).", labels=["deployment"])
        for deployment in self._models().all():
            name = deployment.name
            in_flight.add_metric([name], deployment.in_flight)
            circuit.add_metric([name], CIRCUIT_STATES.get(deployment.breaker.state, 0.0))
            healthy.add_metric([name], 1.0 if deployment.healthy else 0.0)
            engine = deployment.engine
            if engine is not None:
                waiting.add_metric([name], engine.waiting)
                running.add_metric([name], engine.running)
                kv_usage.add_metric([name], engine.kv_usage)
        deployments = GaugeMetricFamily(
            "tokenway_model_deployments",
            "Deployments that can take the model's calls now, discovered workers included.", labels=["model"],
        )
        for model, group in self._models().items():
            deployments.add_metric([model], len(group))
        queue = GaugeMetricFamily("tokenway_queue_length", "Calls waiting in the gateway's admission queue.",
                                  labels=["model"])
        for model, length in self._queue_lengths().items():
            queue.add_metric([model], length)
        decisions = CounterMetricFamily("tokenway_routing_decisions", "Routing decisions by reason.",
                                        labels=["reason"])
        for reason, count in self._routing.snapshot().items():
            decisions.add_metric([reason], count)
        store = CounterMetricFamily(
            "tokenway_limits_store_failures", "Rate-limit/budget store calls that failed (Redis down or slow).",
        )
        store.add_metric([], self._store_failures())
        return [in_flight, circuit, healthy, waiting, running, kv_usage, deployments, queue, decisions, store]
