"""The shipped dashboard and alert rules: valid, and querying only metrics the gateway exports."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.fakes import FakeUpstream
from tests.servers import running_gateway
from tests.test_gateway_openai import MESSAGES, config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
METRIC = re.compile(r"\btokenway_[a-z_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def queried_metrics() -> set[str]:
    names = set(METRIC.findall((DEPLOY / "prometheus" / "alerts.yml").read_text()))
    dashboard = json.loads((DEPLOY / "grafana" / "tokenway.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names.update(METRIC.findall(target["expr"]))
    return names


def test_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI (Debian package 'prometheus'; .ci/run installs it)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    result = subprocess.run([promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_the_generated_one() -> None:
    script = DEPLOY / "grafana" / "build_dashboard.py"
    spec = importlib.util.spec_from_file_location("build_dashboard", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert json.loads((DEPLOY / "grafana" / "tokenway.json").read_text()) == module.dashboard()


def test_every_queried_metric_is_exported(upstream: FakeUpstream) -> None:
    with running_gateway(config(upstream)) as base:
        httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
        httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES, "stream": True})
        text = httpx.get(base + "/metrics").text
    declared = set(re.findall(r"^# TYPE (\S+) (\S+)", text, re.M))
    exported = set()
    for name, kind in declared:
        exported.add(name)
        if kind == "histogram":
            exported.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
        if kind == "counter":
            exported.add(name + "_total")
    missing = sorted(queried_metrics() - exported)
    assert not missing, f"dashboard/alerts query metrics the gateway does not export: {missing}"
