"""Streams under faults: slow first token, stalls, resets, bad chunks, clients that hang up."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests.fakes import WORDS, FakeUpstream
from tests.servers import running_gateway
from tests.test_gateway_openai import MESSAGES, client, config
from tokenway.http_protocol import CoalescingHttpToolsProtocol

STREAM = {"model": "m", "messages": MESSAGES, "stream": True}


def read_stream(base: str) -> tuple[int, list[str]]:
    """Status and the SSE lines (comments included) of one streaming call."""
    with httpx.stream("POST", base + "/v1/chat/completions", json=STREAM, timeout=10) as r:
        return r.status_code, [line for line in r.iter_lines() if line]


def test_heartbeats_while_the_first_token_is_slow(upstream: FakeUpstream) -> None:
    upstream.first_delay = 0.6
    yaml = config(upstream, "slowfirst", extra="streaming: {heartbeat_s: 0.1}")
    with running_gateway(yaml) as base:
        status, lines = read_stream(base)
    assert status == 200
    assert lines.count(": keep-alive") >= 3
    assert lines[-1] == "data: [DONE]"
    assert all(
        not line.startswith(": ") for line in lines[lines.index(next(x for x in lines if x.startswith("data:"))):]
    )


def test_first_token_timeout_after_heartbeats_is_an_error_event(upstream: FakeUpstream) -> None:
    upstream.first_delay = 2
    yaml = config(
        upstream, "slowfirst", extra="streaming: {heartbeat_s: 0.1}", deployment="timeouts: {first_token: 0.5}"
    )
    with running_gateway(yaml) as base:
        started = time.perf_counter()
        status, lines = read_stream(base)
    assert status == 200 and time.perf_counter() - started < 1.5
    error = json.loads(lines[-1][6:])["error"]
    assert error["code"] == "upstream_timeout"


def test_idle_timeout_mid_stream(upstream: FakeUpstream) -> None:
    yaml = config(upstream, "stall", deployment="timeouts: {idle: 0.3}")
    upstream.first_delay = 0
    with running_gateway(yaml) as base:
        started = time.perf_counter()
        status, lines = read_stream(base)
        assert time.perf_counter() - started < 2
        with pytest.raises(openai.APIError):
            list(client(base).chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert status == 200
    assert "data: [DONE]" not in lines
    assert json.loads(lines[-1][6:])["error"]["code"] == "upstream_timeout"
    assert upstream.wait_for_hangup()  # the stalled upstream call was closed, not left hanging


def test_total_deadline_mid_stream(upstream: FakeUpstream) -> None:
    upstream.chunk_delay = 0.3
    yaml = config(upstream, "ok", deployment="timeouts: {total: 0.8}")
    with running_gateway(yaml) as base:
        status, lines = read_stream(base)
    assert status == 200
    assert "total time limit" in json.loads(lines[-1][6:])["error"]["message"]


def test_reset_mid_stream_ends_with_an_error_event(upstream: FakeUpstream) -> None:
    with running_gateway(config(upstream, "reset")) as base:
        status, lines = read_stream(base)
    assert status == 200
    contents = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert [c["choices"][0]["delta"]["content"] for c in contents[:3]] == WORDS[:3]
    assert contents[-1]["error"]["code"] == "upstream_error"


# tokenway's own protocol calls the app back on a hang-up; under plain uvicorn a watcher task notices.
@pytest.mark.parametrize("http", [CoalescingHttpToolsProtocol, "httptools"], ids=["tokenway", "uvicorn"])
def test_client_disconnect_cancels_the_upstream(upstream: FakeUpstream, http: Any) -> None:
    upstream.chunk_delay = 0.2
    with running_gateway(config(upstream, "ok"), http=http) as base:
        with httpx.stream("POST", base + "/v1/chat/completions", json=STREAM, timeout=10) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    break  # hang up after the first chunk
        assert upstream.wait_for_hangup(timeout=2)


def test_chunks_are_not_merged(upstream: FakeUpstream) -> None:
    """Each upstream event arrives at the client as its own read, spaced as the upstream sent it."""
    upstream.chunk_delay = 0.1
    with running_gateway(config(upstream, "ok")) as base:
        arrivals = []
        with httpx.stream("POST", base + "/v1/chat/completions", json=STREAM, timeout=10) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    arrivals.append(time.perf_counter())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) == len(WORDS)
    assert min(gaps) > 0.05


def test_requests_leave_no_reference_cycles_behind(upstream: FakeUpstream) -> None:
    # A cycle left by every request (a cancelled task's traceback, a stream and its wrapper
    # pointing at each other) is freed only by the garbage collector, whose pauses then show
    # up as milliseconds of tail latency. Served requests must be freed by reference counting.
    import gc

    suspects = {"Stream", "_Observed", "cancel_on_disconnect", "CancelledError", "RequestResponseCycle"}
    with running_gateway(config(upstream)) as base:
        http = httpx.Client(base_url=base, headers={"authorization": "Bearer unused"}, timeout=10)
        body = {"model": "m", "messages": MESSAGES}
        for _ in range(3):  # warm: first-use caches and connections are not per-request garbage
            http.post("/v1/chat/completions", json=body)
            http.post("/v1/chat/completions", json={**body, "stream": True})
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(20):
                assert http.post("/v1/chat/completions", json=body).status_code == 200
                assert b"[DONE]" in http.post("/v1/chat/completions", json={**body, "stream": True}).content
            gc.collect()
            left = [type(o).__name__ for o in gc.garbage if type(o).__name__ in suspects]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        # The disconnect watchers are not cancelled: each ends when the server completes its
        # response, so none outlives its request on a kept-alive connection.
        for _ in range(50):  # the last one ends on the server's next loop turn
            watching = sum(1 for o in gc.get_objects() if type(o).__name__ == "cancel_on_disconnect")
            if not watching:
                break
            time.sleep(0.02)
        http.close()
    assert left == []
    assert watching == 0


def test_a_client_gone_before_a_non_streamed_answer_is_noticed_at_once(upstream: FakeUpstream) -> None:
    # The backend would take 30 s; the client hangs up after 0.3 s. The gateway must stop waiting
    # then (499 in its metrics, nothing left in flight), not when the backend finally answers.
    import socket
    from urllib.parse import urlsplit

    with running_gateway(config(upstream, "hang")) as base:
        parts = urlsplit(base)
        body = json.dumps({"model": "m", "messages": MESSAGES}).encode()
        with socket.create_connection((parts.hostname, parts.port)) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n" % len(body) + body)
            time.sleep(0.3)
        started = time.monotonic()
        metrics = ""
        while time.monotonic() - started < 3:
            metrics = httpx.get(base + "/metrics").text
            if 'status_code="499"' in metrics:
                break
            time.sleep(0.05)
        noticed = time.monotonic() - started
    assert 'status_code="499"' in metrics
    assert noticed < 1.0
    assert 'tokenway_in_flight_requests{endpoint="chat"} 0.0' in metrics
