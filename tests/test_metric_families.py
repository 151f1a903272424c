"""The exported metric families: each series the dashboard and the alerts query is there, with the
type and labels it has always had."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tokenway.context import CacheOutcome, RequestContext
from tokenway.observability.live_state import LiveState
from tokenway.observability.metrics import Metrics
from tokenway.protocol import Usage
from tokenway.routing.stats import RoutingStats

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"

FAMILIES = {  # name: (type, label names)
    "tokenway_requests": ("counter", {"model", "deployment", "endpoint", "status_code", "stream"}),
    "tokenway_request_duration_seconds": ("histogram", {"model", "stream"}),
    "tokenway_time_to_first_token_seconds": ("histogram", {"model", "deployment"}),
    "tokenway_inter_token_latency_seconds": ("histogram", {"model", "deployment"}),
    "tokenway_gateway_overhead_seconds": ("histogram", {"endpoint"}),
    "tokenway_tokens": ("counter", {"model", "deployment", "type"}),
    "tokenway_cost_usd": ("counter", {"model", "key_alias"}),
    "tokenway_in_flight_requests": ("gauge", {"endpoint"}),
    "tokenway_upstream_errors": ("counter", {"deployment", "type"}),
    "tokenway_retries": ("counter", {"model"}),
    "tokenway_cache_lookups": ("counter", {"model", "result"}),
    "tokenway_queue_wait_seconds": ("histogram", {"model"}),
    "tokenway_rate_limited": ("counter", {"model", "source"}),
    "tokenway_deployment_in_flight": ("gauge", {"deployment"}),
    "tokenway_deployment_circuit_state": ("gauge", {"deployment"}),
    "tokenway_deployment_healthy": ("gauge", {"deployment"}),
    "tokenway_worker_queue_length": ("gauge", {"deployment"}),
    "tokenway_worker_running_requests": ("gauge", {"deployment"}),
    "tokenway_worker_kv_cache_usage_ratio": ("gauge", {"deployment"}),
    "tokenway_queue_length": ("gauge", {"model"}),
    "tokenway_routing_decisions": ("counter", {"reason"}),
    "tokenway_limits_store_failures": ("counter", set()),
}


def _gateway_exposition() -> str:
    """/metrics after one request of each kind that updates a family, and live state with one of each."""
    metrics = Metrics()

    def request(**fields: object) -> None:
        ctx = RequestContext(request_id="r", endpoint="chat")
        metrics.request_started(ctx.endpoint)
        for name, value in fields.items():
            setattr(ctx, name, value)
        metrics.request_finished(ctx, ctx.started + 0.02)

    request(model="m", deployment="m#0", usage=Usage(7, 20, 3), cost_nanos=12_000)
    request(model="m", deployment="m#0", stream=True, first_token_at=time.perf_counter() + 0.01,
            chunk_gaps=[0.001, 0.02], usage=Usage(7, 8), key_alias="team-a")
    request(model="m", deployment="m#0", cache=CacheOutcome(status="hit"), queue_wait_s=0.3, usage=Usage(1, 1))
    request(model="m", deployment="m#1", attempts=3, status=502, error_type="UpstreamError", failed_mid_stream=True)
    request(model="m", status=429, error_type="RateLimited")
    metrics.upstream_attempt_failed("m#0", TimeoutError())
    engine = SimpleNamespace(waiting=2, running=3, kv_usage=0.5)
    deployment = SimpleNamespace(name="m#0", in_flight=1, breaker=SimpleNamespace(state="open"), healthy=True,
                                 engine=engine)
    routing = RoutingStats()
    routing.count("least_busy")
    models = SimpleNamespace(all=lambda: [deployment])
    metrics.add_collector(LiveState(models, routing, lambda: {"m": 4}, lambda: 0))  # type: ignore[arg-type]
    return metrics.render().decode()


def test_every_family_keeps_its_type_and_labels() -> None:
    found = {}
    for family in text_string_to_metric_families(_gateway_exposition()):
        if family.name.endswith("_created"):  # prometheus-client's creation times, read back as gauges of their own
            continue
        labels = {name for sample in family.samples for name in sample.labels} - {"le"}
        found[family.name] = (family.type, labels)
    assert found == FAMILIES


def test_every_series_the_dashboard_and_the_alerts_query_is_exported() -> None:
    families = text_string_to_metric_families(_gateway_exposition())
    exported = {sample.name for family in families for sample in family.samples}
    queried = {name for path in DEPLOY.rglob("*") if path.suffix in (".json", ".yml", ".py")
               for name in re.findall(r"tokenway_[a-z_]+", path.read_text())}
    assert queried, "no tokenway_* series found under deploy/"
    assert queried <= exported, f"queried under deploy/ but not exported: {sorted(queried - exported)}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian: prometheus) is not installed")
def test_promtool_accepts_the_exposition() -> None:
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=_gateway_exposition(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
