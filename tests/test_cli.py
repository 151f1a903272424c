"""The command line: serve as a real process (one worker, several), flags over env vars, its stdout
as JSON lines only, check-config."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

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


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every whole line the gateway wrote to stdout so far; each one must be a JSON object."""
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def wait_for_events(path: Path, event: str, count: int, proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    deadline = time.time() + 30
    while time.time() < deadline and proc.poll() is None:
        found = [line for line in json_lines(path) if line.get("event") == event]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {count} {event!r} lines in {path}: {path.read_text()}")


def serve(tmp_path: Path, *args: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """``tokenway serve`` as a real process; its stdout and stderr go to files, read while it runs."""
    out, err = tmp_path / "stdout.jsonl", tmp_path / "stderr.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "tokenway", "serve", *args], env={**os.environ, **env},
                                stdout=stdout, stderr=stderr)
    return proc, out, err


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def test_flags_override_env_and_uvicorn_logs_through_the_json_log(tmp_path: Path, upstream: FakeUpstream) -> None:
    path = tmp_path / "tokenway.yaml"
    path.write_text(config(upstream))
    port, env_port = free_port(), free_port()
    proc, out, _ = serve(tmp_path, "--port", str(port), "--log-level", "warning", "--config", str(path), env={
        "TOKENWAY_PORT": str(env_port), "TOKENWAY_LOG_LEVEL": "error", "TOKENWAY_MASTER_KEY": "",
        "TOKENWAY_DRAIN_DELAY_S": "0.1",
    })
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", alive=lambda: proc.poll() is None)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{env_port}/health")
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")  # uvicorn's error logger warns about this
            assert raw.recv(1024).startswith(b"HTTP/1.1 400")
    finally:
        # After its graceful shutdown uvicorn raises the SIGTERM again, so the exit status says what stopped it.
        assert stop(proc) == -signal.SIGTERM
    lines = json_lines(out)
    warning = {"level": "warning", "event": "log", "logger": "uvicorn.error",
               "message": "Invalid HTTP request received."}
    assert any(warning.items() <= line.items() for line in lines)
    # --log-level warning, not the env's error (which would hide that warning); no info lines either.
    assert all(line["level"] in ("warning", "error") for line in lines)


def test_several_workers_without_redis_exit_before_starting(tmp_path: Path) -> None:
    port = free_port()
    result = tokenway("serve", "--workers", "2", "--port", str(port), env={"TOKENWAY_REDIS_URL": ""})
    assert result.returncode == 2
    assert "TOKENWAY_REDIS_URL" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_serve_with_two_workers(tmp_path: Path, upstream: FakeUpstream) -> None:
    path = tmp_path / "tokenway.yaml"
    path.write_text(config(upstream))
    port = free_port()
    proc, out, err = serve(tmp_path, "--workers", "2", env={
        "TOKENWAY_PORT": str(port), "TOKENWAY_CONFIG": str(path), "TOKENWAY_MASTER_KEY": "sk-test",
        "TOKENWAY_REDIS_URL": "redis://127.0.0.1:6379/0", "TOKENWAY_DRAIN_DELAY_S": "0.1",
    })
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(base, alive=lambda: proc.poll() is None)
        wait_for_events(out, "ready", 2, proc)
        pids = {line["pid"] for line in json_lines(out) if line.get("event") == "starting"}
        assert len(pids) == 2  # two worker processes, each with its own app
        for paused in pids:
            # With one worker stopped, the other takes every connection: each one answers on its own.
            os.kill(paused, signal.SIGSTOP)
            try:
                assert httpx.get(base + "/health", timeout=2).json() == {"status": "ok"}
            finally:
                os.kill(paused, signal.SIGCONT)
        auth = {"authorization": "Bearer sk-test"}
        for _ in range(6):
            r = httpx.post(base + "/v1/chat/completions", headers=auth,
                           json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200
    finally:
        assert stop(proc) == 0
    lines = json_lines(out)
    assert len([line for line in lines if line.get("event") == "request"]) == 6
    assert len([line for line in lines if line.get("event") == "stopped"]) == 2  # both shut down cleanly
    assert "sk-test" not in out.read_text() + err.read_text()  # keys are never logged
