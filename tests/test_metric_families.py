"""The exported metric families: each series the dashboard and the alerts query is there, with the
type and labels it has always had."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes import FakeUpstream
from tests.servers import serving_workers
from tests.test_gateway_openai import MESSAGES, config
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
    "tokenway_model_deployments": ("gauge", {"model"}),
    "tokenway_queue_length": ("gauge", {"model"}),
    "tokenway_routing_decisions": ("counter", {"reason"}),
    "tokenway_limits_store_failures": ("counter", set()),
    "tokenway_structured_output_failures": ("counter", {"model", "kind"}),
    "tokenway_structured_output_retries": ("counter", {"model"}),
    "tokenway_guard_actions": ("counter", {"guard", "stage", "action", "model"}),
    "tokenway_context_shaped": ("counter", {"model", "strategy"}),
    "tokenway_context_tokens_removed": ("counter", {"model", "strategy"}),
    "tokenway_prompt_requests": ("counter", {"prompt", "version", "model", "status_code"}),
    "tokenway_tier_decisions": ("counter", {"router", "tier", "reason"}),
    "tokenway_tier_escalations": ("counter", {"router", "tier", "check"}),
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
    metrics.structured_output_failures.labels("m", "json").inc()
    metrics.structured_output_retries.labels("m").inc()
    metrics.guard_acted("pii", "input", "mask", "m")
    metrics.context_shaped.labels("m", "trim").inc()
    metrics.context_tokens_removed.labels("m", "trim").inc(120)
    metrics.prompt_requests.labels("support", "2", "m", "200").inc()
    metrics.tier_decisions.labels("auto", "large", "escalated:empty").inc()
    metrics.tier_escalations.labels("auto", "small", "empty").inc()
    engine = SimpleNamespace(waiting=2, running=3, kv_usage=0.5)
    deployment = SimpleNamespace(name="m#0", in_flight=1, breaker=SimpleNamespace(state="open"), healthy=True,
                                 engine=engine)
    routing = RoutingStats()
    routing.count("least_busy")
    models = SimpleNamespace(all=lambda: [deployment], items=lambda: [("m", (deployment,))])
    metrics.add_collector(LiveState(lambda: models, routing, lambda: {"m": 4}, lambda: 0))  # type: ignore[arg-type]
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


def test_every_family_is_declared_before_first_use_with_several_workers(tmp_path: Path,
                                                                       upstream: FakeUpstream) -> None:
    """``serve --workers 2`` (prometheus-client's multiprocess files): /metrics declares each family from the
    start, e.g. the queue wait before any call has queued, so panels and alerts read zero, not "no data"."""
    with serving_workers(config(upstream), tmp_path) as base:
        before = httpx.get(base + "/metrics").text  # no call yet
        httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
        after = httpx.get(base + "/metrics").text
    for text in (before, after):
        declared = {name.removesuffix("_total") if kind == "counter" else name: kind
                    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)}
        missing = {name: kind for name, (kind, _) in FAMILIES.items() if declared.get(name) != kind}
        assert not missing, f"not declared on /metrics: {missing}"
    assert "tokenway_queue_wait_seconds_count" not in after  # declared empty, not given a made-up sample
    assert 'tokenway_requests_total{' in after  # the observed ones come from the shared files as before


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian: prometheus) is not installed")
def test_dashboard_cache_hit_rate_counts_only_hits_and_misses(tmp_path: Path) -> None:
    """4 hits and 1 miss a minute among 19 bypasses (uncacheable requests, unknown models) read 80%, not 17%."""
    dashboard = json.loads((DEPLOY / "grafana" / "tokenway.json").read_text())
    panel = next(p for p in dashboard["panels"] if p["title"] == "Cache hit rate")
    expr = panel["targets"][0]["expr"]
    series = {"hit": 4, "miss": 1, "bypass": 19}
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": f'tokenway_cache_lookups_total{{model="m",result="{result}"}}', "values": f"0+{n}x30"}
                for result, n in series.items()
            ],
            "promql_expr_test": [{"expr": expr, "eval_time": "20m", "exp_samples": [{"labels": "{}", "value": 0.8}]}],
        }],
    }
    path = tmp_path / "hit_rate_test.yml"
    path.write_text(json.dumps(test))  # JSON is YAML
    result = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
