"""OpenAI's Batch API through the official SDK, over a real socket, against a scripted upstream."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.access_support import config, create_key, gateway
from tests.fakes import FakeUpstream
from tests.jobs_support import auth, batch_lines, jsonl


@pytest.fixture
def upstream() -> FakeUpstream:
    server = FakeUpstream(first_delay=0.0, chunk_delay=0.0).start()
    yield server
    server.stop()


def client(base: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)


def wait_batch(sdk: openai.OpenAI, batch_id: str, timeout: float = 30.0) -> Any:
    deadline = time.time() + timeout
    while True:
        batch = sdk.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        assert time.time() < deadline, f"batch still {batch.status}"
        time.sleep(0.1)


def test_the_sdk_runs_a_batch_end_to_end(upstream: FakeUpstream, tmp_path: Path) -> None:
    bad = b'{"custom_id": "broken", "method": "POST"\n' + orjson.dumps({
        "custom_id": "wrong-url", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m"}}) + b"\n"
    data = batch_lines(5) + bad + batch_lines(1, model="unknown-model", start=5)
    with gateway(config(upstream), tmp_path) as (base, _):
        sdk = client(base, create_key(base, name="nightly")["key"])
        uploaded = sdk.files.create(file=("input.jsonl", data), purpose="batch")
        assert uploaded.purpose == "batch" and uploaded.bytes == len(data)
        assert sdk.files.retrieve(uploaded.id).filename == "input.jsonl"
        batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                   completion_window="24h", metadata={"run": "nightly"})
        assert batch.status in ("validating", "in_progress") and batch.metadata == {"run": "nightly"}
        done = wait_batch(sdk, batch.id)
        assert done.status == "completed", done
        assert done.request_counts.total == 8
        assert (done.request_counts.completed, done.request_counts.failed) == (5, 3)
        assert done.in_progress_at and done.finalizing_at and done.completed_at
        output = jsonl(sdk.files.content(done.output_file_id).content)
        assert sorted(line["custom_id"] for line in output) == [f"r{i}" for i in range(5)]
        for line in output:
            assert line["response"]["status_code"] == 200 and line["error"] is None
            assert line["response"]["body"]["choices"][0]["message"]["content"]
            assert line["id"].startswith("batch_req_") and line["response"]["request_id"]
        errors = {line["error"]["line"]: line for line in jsonl(sdk.files.content(done.error_file_id).content)}
        assert sorted(errors) == [6, 7, 8]  # the lines' numbers in the input file
        assert "not valid JSON" in errors[6]["error"]["message"]
        assert errors[7]["custom_id"] == "wrong-url" and errors[7]["error"]["param"] == "url"
        assert errors[8]["error"]["param"] == "model" and errors[8]["custom_id"] == "r5"
        assert len(upstream.seen) == 5
        listed = sdk.batches.list()
        assert [b.id for b in listed.data] == [batch.id]
        purposes = sorted(f.purpose for f in sdk.files.list().data)
        assert purposes == ["batch", "batch_error", "batch_output"]
        assert sdk.files.delete(uploaded.id).deleted
        with pytest.raises(openai.NotFoundError):
            sdk.files.retrieve(uploaded.id)


def test_other_tenants_cannot_see_files_or_batches(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        alice, bob = client(base, create_key(base)["key"]), client(base, create_key(base)["key"])
        uploaded = alice.files.create(file=("a.jsonl", batch_lines(1)), purpose="batch")
        batch = alice.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                     completion_window="24h")
        for call in (lambda: bob.files.retrieve(uploaded.id), lambda: bob.files.content(uploaded.id),
                     lambda: bob.files.delete(uploaded.id), lambda: bob.batches.retrieve(batch.id),
                     lambda: bob.batches.cancel(batch.id),
                     lambda: bob.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                                completion_window="24h")):
            with pytest.raises(openai.NotFoundError):
                call()
        assert bob.files.list().data == [] and bob.batches.list().data == []


def test_upload_limits_and_bad_batches(upstream: FakeUpstream, tmp_path: Path) -> None:
    small = config(upstream) + "jobs:\n  max_file_bytes: 2048\n"
    with gateway(small, tmp_path) as (base, _):
        key = create_key(base)["key"]
        sdk = client(base, key)
        with pytest.raises(openai.APIStatusError) as too_big:
            sdk.files.create(file=("big.jsonl", batch_lines(100)), purpose="batch")
        assert too_big.value.status_code == 413 and "2048" in too_big.value.message
        with pytest.raises(openai.BadRequestError) as purpose:
            sdk.files.create(file=("x.jsonl", batch_lines(1)), purpose="fine-tune")
        assert purpose.value.body["param"] == "purpose"  # type: ignore[index]
        uploaded = sdk.files.create(file=("x.jsonl", batch_lines(1)), purpose="batch")
        for fields, param in (({"endpoint": "/v1/embeddings"}, "endpoint"),
                              ({"completion_window": "forever"}, "completion_window"),
                              ({"input_file_id": "file-nope"}, "file_id")):
            body = {"input_file_id": uploaded.id, "endpoint": "/v1/chat/completions", "completion_window": "24h",
                    **fields}
            r = httpx.post(base + "/v1/batches", json=body, headers=auth(key))
            assert r.status_code in (400, 404) and r.json()["error"]["param"] == param, r.text
        # A file with no valid line at all is still a batch: everything in the error file.
        broken = sdk.files.create(file=("broken.jsonl", b"nope\n[1]\n"), purpose="batch")
        done = wait_batch(sdk, sdk.batches.create(input_file_id=broken.id, endpoint="/v1/chat/completions",
                                                  completion_window="24h").id)
        assert done.status == "completed" and done.output_file_id is None
        assert [line["error"]["line"] for line in jsonl(sdk.files.content(done.error_file_id).content)] == [1, 2]
        empty = sdk.files.create(file=("empty.jsonl", b"\n"), purpose="batch")
        failed = wait_batch(sdk, sdk.batches.create(input_file_id=empty.id, endpoint="/v1/chat/completions",
                                                    completion_window="24h").id)
        assert failed.status == "failed" and failed.errors.data[0].message == "The input file has no lines."


def test_cancel_a_batch(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream, scenario="hang"), tmp_path) as (base, _):
        sdk = client(base, create_key(base)["key"])
        uploaded = sdk.files.create(file=("x.jsonl", batch_lines(50)), purpose="batch")
        batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                   completion_window="24h")
        deadline = time.time() + 5
        while not upstream.seen:
            assert time.time() < deadline
            time.sleep(0.02)
        cancelling = sdk.batches.cancel(batch.id)
        assert cancelling.status in ("cancelling", "cancelled")
        done = wait_batch(sdk, batch.id, timeout=5)
        assert done.status == "cancelled" and done.cancelled_at
        assert done.request_counts.completed == 0 and done.request_counts.failed == 50
        codes = {line["error"]["code"] for line in jsonl(sdk.files.content(done.error_file_id).content)}
        assert codes == {"batch_cancelled"}


def test_completion_window_expires_what_is_not_done(upstream: FakeUpstream, tmp_path: Path) -> None:
    paced = config(upstream) + "jobs:\n  workers: 1\n"
    with gateway(paced, tmp_path) as (base, _):
        key = create_key(base, rpm=1)["key"]  # one line a minute: the window ends first
        sdk = client(base, key)
        uploaded = sdk.files.create(file=("x.jsonl", batch_lines(6)), purpose="batch")
        batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                   completion_window="2s")
        done = wait_batch(sdk, batch.id, timeout=10)
        assert done.status == "expired" and done.expired_at
        assert (done.request_counts.completed, done.request_counts.failed) == (1, 5)
        assert len(jsonl(sdk.files.content(done.output_file_id).content)) == 1
        codes = [line["error"]["code"] for line in jsonl(sdk.files.content(done.error_file_id).content)]
        assert codes == ["batch_expired"] * 5
        assert len(upstream.seen) == 1
        with pytest.raises(openai.ConflictError):
            sdk.batches.cancel(batch.id)


def test_a_batch_stops_at_its_budget_and_nothing_is_overspent(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        created = create_key(base, budget="0.0001/total")  # 100,000 nano-dollars: five lines' holds
        sdk = client(base, created["key"])
        uploaded = sdk.files.create(file=("x.jsonl", batch_lines(20, max_tokens=6)), purpose="batch")
        batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                   completion_window="24h")
        done = wait_batch(sdk, batch.id)
        assert done.status == "completed"
        served, refused = done.request_counts.completed, done.request_counts.failed
        assert served + refused == 20 and 1 <= served <= 5 and len(upstream.seen) == served
        for line in jsonl(sdk.files.content(done.error_file_id).content):
            assert line["response"]["status_code"] == 429
            assert line["response"]["body"]["error"]["code"] == "insufficient_quota"
        usage = httpx.get(f"{base}/v1/usage", headers=auth(created["key"])).json()
        spent = sum(day["cost_nanos"] for day in usage["by_day"])
        assert spent == served * 19_000 <= 100_000  # the ledger: what was served, within the budget
        assert usage["budgets"][0]["committed_usd"] * 1e9 == pytest.approx(spent)
