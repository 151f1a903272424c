"""Jobs follow the rules of live traffic: rate limits pace them, keys share the workers fairly, the
queue is bounded; and they tell their owner when they finish (signed webhooks)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web

from tests.access_support import config, create_key, gateway
from tests.fakes import FakeUpstream
from tests.jobs_support import auth, batch_lines, wait_job

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_a_rate_limit_paces_a_batch_instead_of_failing_it(tmp_path: Path) -> None:
    upstream = FakeUpstream().start()
    try:
        with gateway(config(upstream), tmp_path) as (base, _):
            key = create_key(base, rpm=120)["key"]  # a bucket of 120, refilled at 2 a second
            sdk = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
            uploaded = sdk.files.create(file=("x.jsonl", batch_lines(126)), purpose="batch")
            started = time.time()
            batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                       completion_window="24h")
            while (done := sdk.batches.retrieve(batch.id)).status != "completed":
                assert time.time() - started < 30
                time.sleep(0.1)
            assert (done.request_counts.completed, done.request_counts.failed) == (126, 0)
            assert time.time() - started >= 2.0  # the six past the bucket waited for it to refill
            assert len(upstream.seen) == 126
    finally:
        upstream.stop()


def test_keys_share_the_workers_fairly(tmp_path: Path) -> None:
    upstream = FakeUpstream(first_delay=0.05).start()
    try:
        with gateway(config(upstream, scenario="slow") + "jobs:\n  workers: 2\n", tmp_path) as (base, _):
            big, small = create_key(base, name="nightly")["key"], create_key(base, name="interactive")["key"]
            sdk = openai.OpenAI(base_url=base + "/v1", api_key=big, max_retries=0)
            uploaded = sdk.files.create(file=("x.jsonl", batch_lines(200)), purpose="batch")
            batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                       completion_window="24h")
            while sdk.batches.retrieve(batch.id).status != "in_progress":
                time.sleep(0.02)
            submitted = time.time()
            jobs = [httpx.post(base + "/v1/async/chat/completions", json=CHAT, headers=auth(small)).json()
                    for _ in range(4)]
            for job in jobs:
                assert wait_job(base, small, job["id"])["status"] == "succeeded"
            # Four jobs on two shared workers, 50 ms each: done while most of the batch still waits.
            progress = sdk.batches.retrieve(batch.id)
            assert progress.status == "in_progress" and progress.request_counts.completed < 100, progress
            assert time.time() - submitted < 5.0
            sdk.batches.cancel(batch.id)
    finally:
        upstream.stop()


def test_the_queue_is_bounded_per_key_and_in_total(tmp_path: Path) -> None:
    upstream = FakeUpstream().start()
    bounded = config(upstream, scenario="hang") + "jobs:\n  workers: 1\n  max_queued_per_key: 2\n  max_queued: 3\n"
    try:
        with gateway(bounded, tmp_path) as (base, _):
            alice, bob = create_key(base)["key"], create_key(base)["key"]
            first = httpx.post(base + "/v1/async/chat/completions", json=CHAT, headers=auth(alice)).json()
            while httpx.get(f"{base}/v1/async/{first['id']}", headers=auth(alice)).json()["status"] != "running":
                time.sleep(0.02)
            for _ in range(2):
                submitted = httpx.post(base + "/v1/async/chat/completions", json=CHAT, headers=auth(alice))
                assert submitted.status_code == 202
            full = httpx.post(base + "/v1/async/chat/completions", json=CHAT, headers=auth(alice))
            assert full.status_code == 429 and "max_queued_per_key" in full.json()["error"]["message"]
            assert int(full.headers["retry-after"]) > 0
            assert httpx.post(base + "/v1/async/chat/completions", json=CHAT, headers=auth(bob)).status_code == 202
            total = httpx.post(base + "/v1/async/chat/completions", json=CHAT, headers=auth(bob))
            assert total.status_code == 429 and "jobs.max_queued" in total.json()["error"]["message"]
            metrics = httpx.get(base + "/metrics").text
            assert 'tokenway_jobs{status="queued"}' in metrics and "tokenway_jobs_oldest_queued_age_seconds" in metrics
    finally:
        upstream.stop()


class Receiver:
    """A webhook endpoint on loopback: fails the first ``failures`` deliveries with 500."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.deliveries: list[tuple[dict[str, str], bytes, float]] = []
        self.port = 0

    def start(self) -> Receiver:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def hook(request: web.Request) -> web.Response:
            self.deliveries.append((dict(request.headers), await request.read(), time.time()))
            if self.failures > 0:
                self.failures -= 1
                return web.Response(status=500)
            return web.Response(status=204)

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            app = web.Application()
            app.router.add_post("/hook", hook)
            self._runner = web.AppRunner(app)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(5)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)


def test_a_webhook_is_signed_and_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENWAY_WEBHOOK_SECRET", "whsec-test")
    upstream, receiver = FakeUpstream().start(), Receiver(failures=2).start()
    hooks = "jobs:\n  webhooks: {allowed_hosts: [127.0.0.1], first_backoff_s: 0.2}\n"
    try:
        with gateway(config(upstream) + hooks, tmp_path) as (base, _):
            key = create_key(base)["key"]
            url = f"http://127.0.0.1:{receiver.port}/hook"
            job = httpx.post(base + "/v1/async/chat/completions", json={**CHAT, "webhook_url": url},
                             headers=auth(key)).json()
            wait_job(base, key, job["id"])
            deadline = time.time() + 5
            while len(receiver.deliveries) < 3:
                assert time.time() < deadline, receiver.deliveries
                time.sleep(0.05)
            headers, body, _ = receiver.deliveries[-1]
            timestamp, signature = (part.split("=", 1)[1] for part in headers["tokenway-signature"].split(","))
            expected = hmac.new(b"whsec-test", f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(signature, expected)
            event: dict[str, Any] = orjson.loads(body)
            assert event["type"] == "job.succeeded" and event["data"]["id"] == job["id"]
            gaps = [b[2] - a[2] for a, b in zip(receiver.deliveries, receiver.deliveries[1:], strict=False)]
            assert gaps[1] > gaps[0] * 1.5  # backoff doubles
            deadline = time.time() + 2
            while httpx.get(f"{base}/v1/async/{job['id']}", headers=auth(key)).json()["webhook_state"] != "delivered":
                assert time.time() < deadline
                time.sleep(0.05)
    finally:
        receiver.stop()
        upstream.stop()
