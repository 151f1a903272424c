"""Writes deploy/grafana/tokenway.json, the Grafana dashboard (run after changing a panel here).

    python deploy/grafana/build_dashboard.py
"""

from __future__ import annotations

import json
from pathlib import Path

PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    # (title, unit, [(legend, PromQL)])
    ("Requests per second", "reqps", [("{{status_code}}", "sum by (status_code) (rate(tokenway_requests_total[1m]))")]),
    ("Error rate (5xx)", "percentunit", [(
        "5xx share",
        'sum(rate(tokenway_requests_total{status_code=~"5.."}[5m])) / clamp_min(sum(rate(tokenway_requests_total[5m])), 1e-9)',
    )]),
    ("Request latency", "s", [
        (f"p{q}", f"histogram_quantile(0.{q}, sum by (le) (rate(tokenway_request_duration_seconds_bucket[5m])))")
        for q in ("50", "95", "99")
    ]),
    ("Time to first token", "s", [
        (f"p{q}", f"histogram_quantile(0.{q}, sum by (le) (rate(tokenway_time_to_first_token_seconds_bucket[5m])))")
        for q in ("50", "95", "99")
    ]),
    ("Inter-token latency p50 / p99", "s", [
        (f"p{q}", f"histogram_quantile(0.{q}, sum by (le) (rate(tokenway_inter_token_latency_seconds_bucket[5m])))")
        for q in ("50", "99")
    ]),
    ("Tokens per second", "short", [("{{type}}", "sum by (type) (rate(tokenway_tokens_total[1m]))")]),
    ("Cost per hour (USD)", "currencyUSD", [("{{model}}", "sum by (model) (rate(tokenway_cost_usd_total[5m])) * 3600")]),
    # Of the requests the cache could have served: bypasses (uncacheable requests, no-store, models
    # without caching) and refreshes are not lookups that could hit, so they stay out of the denominator.
    ("Cache hit rate", "percentunit", [(
        "hits / (hits + misses)",
        'sum(rate(tokenway_cache_lookups_total{result="hit"}[5m]))'
        ' / clamp_min(sum(rate(tokenway_cache_lookups_total{result=~"hit|miss"}[5m])), 1e-9)',
    )]),
    ("In flight and queued", "short", [
        ("in flight", "sum(tokenway_in_flight_requests)"),
        ("queued {{model}}", "sum by (model) (tokenway_queue_length)"),
    ]),
    ("Queue wait p95", "s", [(
        "{{model}}", "histogram_quantile(0.95, sum by (le, model) (rate(tokenway_queue_wait_seconds_bucket[5m])))",
    )]),
    ("Deployments per model (discovered workers included)", "short", [
        ("{{model}}", "min by (model) (tokenway_model_deployments)"),
    ]),
    ("Worker KV-cache use", "percentunit", [("{{deployment}}", "max by (deployment) (tokenway_worker_kv_cache_usage_ratio)")]),
    ("Circuit state (0 closed, 1 half-open, 2 open)", "short", [
        ("{{deployment}}", "max by (deployment) (tokenway_deployment_circuit_state)"),
    ]),
    ("Gateway overhead p99", "s", [(
        "p99", "histogram_quantile(0.99, sum by (le) (rate(tokenway_gateway_overhead_seconds_bucket[5m])))",
    )]),
    ("Routing decisions", "reqps", [("{{reason}}", "sum by (reason) (rate(tokenway_routing_decisions_total[5m]))")]),
    ("Upstream errors and 429s", "reqps", [
        ("{{type}}", "sum by (type) (rate(tokenway_upstream_errors_total[5m]))"),
        ("429 {{source}}", "sum by (source) (rate(tokenway_rate_limited_total[5m]))"),
    ]),
]


def dashboard() -> dict[str, object]:
    panels = []
    for i, (title, unit, targets) in enumerate(PANELS):
        panels.append({
            "id": i + 1,
            "type": "timeseries",
            "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [
                {"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend}
                for j, (legend, expr) in enumerate(targets)
            ],
        })
    return {
        "title": "tokenway",
        "uid": "tokenway",
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus"}]},
        "panels": panels,
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("tokenway.json")
    out.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {out}")
