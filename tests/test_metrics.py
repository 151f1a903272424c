"""/metrics after scripted traffic: exact counts, TTFT against a known delay, several workers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.fakes import WORDS, FakeUpstream
from tests.servers import free_port, running_gateway, wait_until_ready
from tests.test_gateway_openai import MESSAGES, config


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in exposition text; labels given must all match."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"no sample {name} {labels}"
    return total


def test_counters_and_histograms_after_traffic(upstream: FakeUpstream) -> None:
    upstream.first_delay = 0.3
    yaml = config(upstream, "slowfirst", deployment="price: {input_per_1m: 1000, output_per_1m: 2000}")
    with running_gateway(yaml) as base:
        for _ in range(3):
            assert httpx.post(
                base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES}
            ).status_code == 200
        for _ in range(2):
            r = httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES, "stream": True})
            assert r.status_code == 200
            assert float(r.headers["x-tokenway-overhead-ms"]) >= 0
        assert httpx.post(base + "/v1/chat/completions", json={"model": "x", "messages": MESSAGES}).status_code == 404
        text = httpx.get(base + "/metrics").text
    ok = {"model": "m", "deployment": "m#0", "status_code": "200"}
    assert sample(text, "tokenway_requests_total", **ok, stream="false") == 3
    assert sample(text, "tokenway_requests_total", **ok, stream="true") == 2
    assert sample(text, "tokenway_requests_total", status_code="404", model="none") == 1
    assert sample(text, "tokenway_request_duration_seconds_count", model="m") == 5
    # TTFT: the fake upstream waits 0.3 s before its first chunk, so both streams land above 0.25 s.
    assert sample(text, "tokenway_time_to_first_token_seconds_count", model="m") == 2
    assert sample(text, "tokenway_time_to_first_token_seconds_bucket", model="m", le="0.25") == 0
    assert sample(text, "tokenway_time_to_first_token_seconds_bucket", model="m", le="0.5") == 2
    # Each stream relays its blocks with ~10 ms gaps (the fake's chunk delay).
    assert sample(text, "tokenway_inter_token_latency_seconds_count", model="m") >= 2 * (len(WORDS) - 2)
    assert sample(text, "tokenway_tokens_total", model="m", type="prompt") == 5 * 7
    assert sample(text, "tokenway_tokens_total", model="m", type="completion") == 5 * len(WORDS)
    cost = sample(text, "tokenway_cost_usd_total", model="m")
    assert abs(cost - 5 * (7 * 1000 + len(WORDS) * 2000) / 1e6) < 1e-9
    assert sample(text, "tokenway_in_flight_requests") == 0
    assert sample(text, "tokenway_gateway_overhead_seconds_count", endpoint="chat") == 6


def test_upstream_errors_are_counted_by_type(upstream: FakeUpstream) -> None:
    with running_gateway(config(upstream, "status500")) as base:
        for _ in range(2):
            httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
        text = httpx.get(base + "/metrics").text
    # every failed attempt counts, retries included; the clients got errors either way
    attempts = len(upstream.seen)
    assert attempts >= 2
    assert sample(text, "tokenway_upstream_errors_total", deployment="m#0", type="UpstreamError") == attempts
    assert sample(text, "tokenway_requests_total", model="m") == 2


def test_metrics_add_up_across_worker_processes(tmp_path: Path, upstream: FakeUpstream) -> None:
    path = tmp_path / "tokenway.yaml"
    path.write_text(config(upstream))
    port = free_port()
    env = {**os.environ, "TOKENWAY_PORT": str(port), "TOKENWAY_CONFIG": str(path), "TOKENWAY_WORKERS": "2",
           "TOKENWAY_REDIS_URL": "redis://127.0.0.1:6379/0"}  # several workers share their counters there
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "tokenway", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base)
        pids = set()
        for _ in range(20):
            # a new connection each time, so both workers get some of them
            with httpx.Client() as c:
                r = c.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
                assert r.status_code == 200
        texts = [httpx.get(base + "/metrics").text for _ in range(4)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    for text in texts:  # whichever worker answers the scrape, it reports all 20
        assert sample(text, "tokenway_requests_total", status_code="200") == 20
        pids.update(re.findall(r'pid="(\d+)"', text))


def test_usage_null_in_every_chunk_is_relayed_and_only_the_real_usage_is_counted(upstream: FakeUpstream) -> None:
    with running_gateway(config(upstream, "nullusage")) as base:
        r = httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES, "stream": True})
        text = httpx.get(base + "/metrics").text
    events = [line for line in r.text.split("\n\n") if line.startswith("data: {")]
    assert len(events) == len(WORDS)  # the usage chunk the gateway asked for was kept back
    assert all('"usage": null' in event for event in events)  # the nulls pass through untouched
    assert sample(text, "tokenway_tokens_total", model="m", type="completion") == len(WORDS)
