"""The command line: serve as a real process (several workers), env-var flags, check-config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.fakes import FakeUpstream
from tests.servers import free_port, wait_until_ready
from tests.test_gateway_openai import config


def tokenway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tokenway", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_check_config_ok_and_bad(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("models:\n  - name: m\n    deployments:\n      - {provider: openai, api_base: 'http://x/v1'}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - name: m\n    deployments:\n      - provider: openai\n        timeouts: {idle: zero}\n")
    ok = tokenway("check-config", str(good))
    assert ok.returncode == 0 and "OK" in ok.stdout
    failed = tokenway("check-config", str(bad))
    assert failed.returncode == 1
    assert f"{bad}:5: models[0].deployments[0].timeouts.idle" in failed.stderr


def test_refuses_open_gateway_on_a_public_address(tmp_path: Path) -> None:
    result = tokenway("serve", "--host", "0.0.0.0", "--port", str(free_port()), env={"TOKENWAY_MASTER_KEY": ""})
    assert result.returncode == 2 and "--allow-open" in result.stderr


def test_serve_with_two_workers_from_env_vars(tmp_path: Path, upstream: FakeUpstream) -> None:
    path = tmp_path / "tokenway.yaml"
    path.write_text(config(upstream))
    port = free_port()
    env = {**os.environ, "TOKENWAY_PORT": str(port), "TOKENWAY_CONFIG": str(path), "TOKENWAY_WORKERS": "2",
           "TOKENWAY_MASTER_KEY": "sk-test"}
    proc = subprocess.Popen([sys.executable, "-m", "tokenway", "serve"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(base)
        auth = {"authorization": "Bearer sk-test"}
        for _ in range(6):
            r = httpx.post(base + "/v1/chat/completions", headers=auth,
                           json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    request_lines = [line for line in out.splitlines() if '"event":"request"' in line]
    assert len(request_lines) == 6
    pids = {line.split('"pid":')[1].split(",")[0] for line in out.splitlines() if '"event":"starting"' in line}
    assert len(pids) == 2  # two worker processes, each with its own app
    assert "sk-test" not in out + err  # keys are never logged
