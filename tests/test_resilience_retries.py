"""Retries over real sockets: what the provider maps to a retry, the deadline, never after the first byte.

Backoff, Retry-After and the retry budget are timed on a fake clock, in process: tests/test_chain_retries.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.fakes import WORDS, FakeUpstream
from tests.servers import running_gateway
from tokenway.config import load_config

MESSAGES = [{"role": "user", "content": "hi"}]
TEXT = "".join(WORDS)


def gateway_yaml(upstream: FakeUpstream, *scenarios: str, model: str = "", deployment: str = "") -> str:
    """One model ``m`` with one deployment per scenario; ``model``/``deployment`` add YAML fields."""
    lines = ["models:", "  - name: m", "    deployments:"]
    for scenario in scenarios:
        url = upstream.url(scenario)
        lines.append(f"      - {{provider: openai, name: {scenario}, api_base: '{url}'{deployment}}}")
    lines += [f"    {line}" for line in model.splitlines() if line.strip()]
    return "\n".join(lines) + "\n"


def chat(base: str, **body: object) -> httpx.Response:
    return httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES, **body}, timeout=20)


def decisions(base: str) -> dict[str, int]:
    return httpx.get(base + "/admin/routing").json()["decisions"]  # type: ignore[no-any-return]


def calls_to(upstream: FakeUpstream, scenario: str) -> int:
    return sum(1 for s in upstream.seen if s.path.startswith(f"/{scenario}/"))


def test_transient_503s_are_retried_until_success(upstream: FakeUpstream) -> None:
    upstream.fail_times["ok"] = 2
    with running_gateway(gateway_yaml(upstream, "ok")) as base:
        r = chat(base)
        stats = decisions(base)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == TEXT
    assert calls_to(upstream, "ok") == 3
    assert stats["retry.attempt"] == 2


def test_attempts_are_bounded_and_the_last_error_is_relayed(upstream: FakeUpstream) -> None:
    upstream.fail_times["ok"] = 10
    with running_gateway(gateway_yaml(upstream, "ok", model="retry: {attempts: 3}")) as base:
        r = chat(base)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    assert "retry-after" in r.headers  # nothing could answer: tell the client when to come back
    assert calls_to(upstream, "ok") == 3


def test_never_retried_after_the_first_byte(upstream: FakeUpstream) -> None:
    with running_gateway(gateway_yaml(upstream, "reset", "ok")) as base:
        with httpx.stream("POST", base + "/v1/chat/completions", timeout=10,
                          json={"model": "m", "messages": MESSAGES, "stream": True}) as r:
            lines = [line for line in r.iter_lines() if line]
    assert r.status_code == 200
    assert json.loads(lines[-1][6:])["error"]["code"] == "upstream_error"
    assert len(upstream.seen) == 1  # the client had bytes: no second call, no duplicate output


def test_a_stream_that_dies_before_its_first_chunk_is_retried(upstream: FakeUpstream) -> None:
    with running_gateway(gateway_yaml(upstream, "resetfirst", "sse")) as base:
        for _ in range(2):
            with httpx.stream("POST", base + "/v1/chat/completions", timeout=10,
                              json={"model": "m", "messages": MESSAGES, "stream": True}) as r:
                lines = [line for line in r.iter_lines() if line]
            assert r.status_code == 200 and lines[-1] == "data: [DONE]"
            content = "".join(json.loads(x[6:])["choices"][0]["delta"].get("content", "")
                              for x in lines[:-1] if json.loads(x[6:]).get("choices"))
            assert content == TEXT
    assert calls_to(upstream, "resetfirst") >= 1 and calls_to(upstream, "sse") == 2


def test_retries_stop_at_the_deadline(upstream: FakeUpstream) -> None:
    yaml = gateway_yaml(upstream, "hang", "hang2", model="retry: {attempts: 10}",
                        deployment=", timeouts: {first_token: 0.4, total: 1}")
    upstream_hang2 = yaml.replace("/hang2/", "/hang/")  # both deployments hang
    with running_gateway(upstream_hang2) as base:
        started = time.perf_counter()
        r = chat(base)
        elapsed = time.perf_counter() - started
    assert r.status_code == 504
    assert elapsed < 2.5  # bounded by the 1 s deadline, not by 10 attempts x 0.4 s
    assert len(upstream.seen) <= 3


RETRY_ON_5XX = """models:
  - name: m
    deployments:
      - {provider: openai, api_base: 'http://127.0.0.1:9/v1'}
    retry: {on: [5xx]}
"""


def test_retry_on_as_the_docs_write_it_loads(tmp_path: Path) -> None:
    # A bare `on` is the boolean True in YAML 1.1; the loader keeps it the key "on".
    path = tmp_path / "tokenway.yaml"
    path.write_text(RETRY_ON_5XX)
    assert load_config(path).models[0].retry.on == ["5xx"]
    checked = subprocess.run([sys.executable, "-m", "tokenway", "check-config", str(path)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and "OK" in checked.stdout, checked.stderr


def test_check_config_points_at_a_bad_retry_on_line(tmp_path: Path) -> None:
    path = tmp_path / "tokenway.yaml"
    path.write_text(RETRY_ON_5XX.replace("retry: {on: [5xx]}", "retry:\n      attempts: 2\n      on: [5xx, 6xx]"))
    checked = subprocess.run([sys.executable, "-m", "tokenway", "check-config", str(path)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 1
    assert checked.stderr.startswith(f"{path}:7: models[0].retry.on[1]: Input should be 'connect'")


def test_errors_outside_retry_on_are_not_retried(upstream: FakeUpstream) -> None:
    upstream.fail_times["ok"] = 1  # one 503, then fine
    with running_gateway(gateway_yaml(upstream, "ok", model="retry: {on: [timeout, connect]}")) as base:
        r = chat(base)
    assert r.status_code == 502 and calls_to(upstream, "ok") == 1
