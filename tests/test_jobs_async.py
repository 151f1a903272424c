"""The async API over a real socket: submit, poll, cancel, list, idempotency, isolation, bad input."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.access_support import MASTER, config, create_key, gateway
from tests.fakes import FakeUpstream
from tests.jobs_support import auth, wait_job

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def upstream() -> FakeUpstream:
    server = FakeUpstream(first_delay=0.0, chunk_delay=0.0).start()
    yield server
    server.stop()


def test_submit_poll_and_the_live_body(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        created = create_key(base, name="reports")
        key = created["key"]
        r = httpx.post(base + "/v1/async/chat/completions", json=CHAT, headers=auth(key))
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["object"] == "async.job" and job["status"] == "queued" and job["created_at"] > 0
        done = wait_job(base, key, job["id"])
        assert done["status"] == "succeeded" and done["attempts"] == 1
        live = httpx.post(base + "/v1/chat/completions", json=CHAT, headers=auth(key)).json()
        assert done["result"]["choices"][0]["message"] == live["choices"][0]["message"]
        assert done["timings"]["run_s"] is not None
        # /docs describes the submit with the live endpoint's body.
        schema = httpx.get(base + "/openapi.json").json()["paths"]["/v1/async/chat/completions"]["post"]
        assert schema["requestBody"]["content"]["application/json"]["schema"]["allOf"][0]["$ref"].endswith(
            "/ChatCompletionRequest")
        # The seed's path answers too.
        seed = httpx.get(f"{base}/v1/async/completions/{job['id']}", headers=auth(key)).json()
        assert seed["id"] == job["id"]
        # The ledger row names the job and the key that submitted it.
        assert ledger_rows(tmp_path, job["id"]) == [(created["id"], 200)]


def ledger_rows(data_dir: Path, job_id: str, wait: float = 5.0) -> list[tuple[str, int]]:
    """The usage ledger's rows for a job (the ledger is flushed every 0.2 s in these configs)."""
    deadline = time.time() + wait
    while True:
        with sqlite3.connect(data_dir / "tokenway.db") as db:
            rows = db.execute("SELECT key_id, status FROM tokenway_usage WHERE job_id = ?", (job_id,)).fetchall()
        if rows or time.time() > deadline:
            return [tuple(r) for r in rows]
        time.sleep(0.1)


def test_idempotency_key_returns_the_same_job_and_refuses_another_body(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        key = create_key(base)["key"]
        headers = {**auth(key), "Idempotency-Key": "nightly-2026-12-07"}
        first = httpx.post(base + "/v1/async/chat/completions", json=CHAT, headers=headers)
        again = httpx.post(base + "/v1/async/chat/completions", json=CHAT, headers=headers)
        assert first.status_code == again.status_code == 202
        assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
        other = httpx.post(base + "/v1/async/chat/completions", json={**CHAT, "max_tokens": 5}, headers=headers)
        assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"
        # Another key may use the same idempotency key: it names a different job.
        second_key = create_key(base)["key"]
        theirs = httpx.post(base + "/v1/async/chat/completions", json=CHAT,
                            headers={**auth(second_key), "Idempotency-Key": "nightly-2026-12-07"})
        assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]
        wait_job(base, key, first.json()["id"])
        assert len(upstream.seen) == 2  # one call per job, not per submit


def test_tenants_see_only_their_own_jobs(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        alice, bob = create_key(base, name="alice")["key"], create_key(base, name="bob")["key"]
        job = httpx.post(base + "/v1/async/chat/completions", json=CHAT, headers=auth(alice)).json()
        for method, path in (("GET", f"/v1/async/{job['id']}"), ("POST", f"/v1/async/{job['id']}/cancel")):
            r = httpx.request(method, base + path, headers=auth(bob))
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
        assert httpx.get(base + "/v1/async", headers=auth(bob)).json()["data"] == []
        mine = httpx.get(base + "/v1/async", headers=auth(alice)).json()
        assert [j["id"] for j in mine["data"]] == [job["id"]]
        assert httpx.get(base + "/v1/async", headers=auth("tw-wrong")).status_code == 401
        admin = httpx.get(base + "/admin/jobs", headers=auth(MASTER)).json()
        assert job["id"] in [j["id"] for j in admin["jobs"]["data"]]
        assert httpx.get(base + "/admin/jobs", headers=auth(alice)).status_code == 403


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
    ({**CHAT, "stream": True}, 400, "stream"),
    ({"model": "m"}, 400, "messages"),
    ({**CHAT, "webhook_url": "https://evil.example/steal"}, 400, "webhook_url"),
    ({**CHAT, "max_tokens": 10**9}, 400, "max_tokens"),
])
def test_bad_submits_are_refused_at_submit_time(upstream: FakeUpstream, tmp_path: Path, body: dict[str, object],
                                                status: int, param: str) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        key = create_key(base)["key"]
        r = httpx.post(base + "/v1/async/chat/completions", json=body, headers=auth(key))
        assert r.status_code == status and r.json()["error"]["param"] == param, r.text
        assert upstream.seen == []


def test_a_key_may_submit_only_its_models(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        key = create_key(base, models=["other"])["key"]
        r = httpx.post(base + "/v1/async/chat/completions", json=CHAT, headers=auth(key))
        assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"


def test_cancel_stops_the_upstream_call_within_a_second(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream, scenario="hang"), tmp_path) as (base, _):
        key = create_key(base)["key"]
        job = httpx.post(base + "/v1/async/chat/completions", json=CHAT, headers=auth(key)).json()
        deadline = time.time() + 5
        while not upstream.seen:
            assert time.time() < deadline, "the job never reached the upstream"
            time.sleep(0.02)
        cancelled_at = time.time()
        r = httpx.post(f"{base}/v1/async/{job['id']}/cancel", headers=auth(key))
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert upstream.wait_for_hangup(timeout=1.0), "the upstream call went on after the cancel"
        assert time.time() - cancelled_at < 1.0
        again = httpx.post(f"{base}/v1/async/{job['id']}/cancel", headers=auth(key))
        assert again.status_code == 409
        assert wait_job(base, key, job["id"])["status"] == "cancelled"


def test_cancelling_a_finished_job_is_a_conflict(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        key = create_key(base)["key"]
        job = httpx.post(base + "/v1/async/completions", json={"model": "m", "prompt": "hi"}, headers=auth(key)).json()
        done = wait_job(base, key, job["id"])
        assert done["status"] == "succeeded" and done["result"]["choices"][0]["text"]
        r = httpx.post(f"{base}/v1/async/{job['id']}/cancel", headers=auth(key))
        assert r.status_code == 409 and "already finished" in r.json()["error"]["message"]
        listed = httpx.get(base + "/v1/async", params={"status": "succeeded", "limit": 1}, headers=auth(key)).json()
        assert [j["id"] for j in listed["data"]] == [job["id"]]
        assert httpx.get(base + "/v1/async/job_unknown", headers=auth(key)).status_code == 404
