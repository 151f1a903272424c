"""``POST /admin/drain`` over a real socket: the same drain as SIGTERM, started by a call (a cloud's
interruption notice, a preStop hook). /ready fails, new calls are refused, the stream in flight finishes."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.fakes import FakeUpstream
from tests.servers import running_app, serving_workers
from tests.test_drain import BODY, stream_lines
from tests.test_gateway_openai import config

ADMIN = {"authorization": "Bearer master"}


def test_admin_drain_refuses_new_work_and_lets_the_stream_in_flight_finish(upstream: FakeUpstream) -> None:
    upstream.chunk_delay = 0.2  # a stream of ~1.2 s: still running when the drain starts
    with running_app(config(upstream, "sse"), master_key="master") as (base, app):
        assert httpx.post(base + "/admin/drain").status_code == 401  # the master key is required
        assert not app.draining
        arrivals: list[float] = []
        with ThreadPoolExecutor(1) as pool:
            inflight = pool.submit(stream_lines, base, arrivals, ADMIN)
            while not arrivals:
                time.sleep(0.01)
            first = httpx.post(base + "/admin/drain", headers=ADMIN)
            again = httpx.post(base + "/admin/drain", headers=ADMIN)
            ready = httpx.get(base + "/ready")
            refused = httpx.post(base + "/v1/chat/completions", json={**BODY, "stream": False},
                                 headers=ADMIN, timeout=5)
            status = httpx.get(base + "/admin/status", headers=ADMIN).json()
            lines = inflight.result(timeout=20)
    assert first.status_code == 202 and first.json() == {"draining": True, "already_draining": False}
    assert again.status_code == 202 and again.json() == {"draining": True, "already_draining": True}
    assert ready.status_code == 503 and ready.json() == {"ready": False}
    assert refused.status_code == 503 and "retry-after" in refused.headers
    assert refused.json()["error"]["type"]  # OpenAI's envelope, so the SDK raises and can retry elsewhere
    assert status["draining"] is True and status["ready"] is False
    assert lines[-1] == "data: [DONE]"  # the stream that was running finished whole


def test_the_drain_file_starts_the_drain(tmp_path: Path, upstream: FakeUpstream) -> None:
    """A file any process on the box can create (a spot-notice watcher sharing the volume)."""
    flag = tmp_path / "drain"
    with running_app(config(upstream), drain_file=flag) as (base, app):
        assert httpx.get(base + "/ready").status_code == 200
        flag.touch()
        deadline = time.monotonic() + 5
        while httpx.get(base + "/ready").status_code != 503:
            assert time.monotonic() < deadline, "the drain file was not noticed"
            time.sleep(0.05)
        assert app.draining


def test_admin_drain_reaches_every_worker(tmp_path: Path, upstream: FakeUpstream) -> None:
    """``serve --workers 2``: the call lands on one worker; every worker stops being ready."""
    with serving_workers(config(upstream), tmp_path, TOKENWAY_MASTER_KEY="master") as base:
        assert httpx.post(base + "/admin/drain", headers=ADMIN).status_code == 202
        time.sleep(1.0)  # the other worker looks for the drain file four times a second
        # a new connection each time, so both workers answer some of them
        ready = [httpx.get(base + "/ready").status_code for _ in range(20)]
    assert ready == [503] * 20
