"""``kill -9`` of the gateway in the middle of a batch, then a restart: every line ends with exactly
one result, and the ledger holds every call whose answer came back."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import openai
import orjson

from tests.access_support import MASTER, config, create_key, gateway
from tests.fakes import FakeUpstream
from tests.jobs_support import batch_lines, jsonl
from tests.servers import free_port, wait_until_ready

LINES = 120


def serve(config_path: Path, data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TOKENWAY_MASTER_KEY": MASTER, "TOKENWAY_DATA_DIR": str(data_dir),
           "TOKENWAY_DRAIN_DELAY_S": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "tokenway", "serve", "--config", str(config_path), "--port", str(port),
         "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_kill_9_mid_batch_then_restart_gives_every_line_one_result(tmp_path: Path) -> None:
    upstream = FakeUpstream(first_delay=0.05).start()  # each answer takes 50 ms
    try:
        config_path = tmp_path / "tokenway.yaml"
        config_path.write_text(config(upstream, scenario="slow") + "jobs:\n  workers: 8\n  lease_s: 2\n")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        first = serve(config_path, tmp_path, port)
        try:
            wait_until_ready(base, 60, lambda: first.poll() is None)
            key = create_key(base)["key"]
            sdk = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
            uploaded = sdk.files.create(file=("in.jsonl", batch_lines(LINES, max_tokens=6)), purpose="batch")
            batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                       completion_window="24h")
            deadline = time.time() + 30
            while sdk.batches.retrieve(batch.id).request_counts.completed < LINES // 3:
                assert time.time() < deadline, "the batch made no progress"
                time.sleep(0.05)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        calls_before_restart = len(upstream.seen)
        assert calls_before_restart < LINES, "the batch finished before the kill; nothing was interrupted"

        second = serve(config_path, tmp_path, port)
        try:
            wait_until_ready(base, 60, lambda: second.poll() is None)
            deadline = time.time() + 60
            while (done := sdk.batches.retrieve(batch.id)).status not in ("completed", "failed", "expired"):
                assert time.time() < deadline, f"the batch is still {done.status} after the restart"
                time.sleep(0.1)
            assert done.status == "completed"
            assert (done.request_counts.completed, done.request_counts.failed) == (LINES, 0)
            output = jsonl(sdk.files.content(done.output_file_id).content)
            ids = Counter(line["custom_id"] for line in output)
            assert sorted(ids) == sorted(f"r{i}" for i in range(LINES)) and set(ids.values()) == {1}
            assert done.error_file_id is None
            time.sleep(1.0)  # the ledger's flush
            httpx.get(base + "/admin/usage", headers={"Authorization": f"Bearer {MASTER}"})
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(20)
        with sqlite3.connect(tmp_path / "tokenway.db") as db:
            answered, recorded = db.execute(
                "SELECT count(*) FILTER (WHERE status = 200), count(*) FROM tokenway_usage WHERE batch_id = ?",
                (batch.id,)).fetchone()
        calls = len(upstream.seen)
        # Every line's answer is in the ledger, and so is every other call that ended in this process
        # (a run whose claim ran out, stopped or answered after all); only the calls in flight when
        # the process was killed (at most one per worker) reached the upstream with no row.
        assert answered >= LINES and recorded <= calls <= recorded + 8
    finally:
        upstream.stop()


def test_batches_left_validating_or_finalizing_by_a_dead_process_are_taken_over(tmp_path: Path) -> None:
    from tokenway.jobs.files import FileContents
    from tokenway.jobs.records import Batch, Job, StoredFile
    from tokenway.jobs.sqlite import SqliteJobStore

    long_ago = time.time() - 600
    data = batch_lines(3)

    async def leave_behind() -> None:
        store = SqliteJobStore(tmp_path / "jobs.db")
        await store.start()
        writer = FileContents(tmp_path / "files").writer("file-in")
        writer.write(data)
        await writer.commit()
        await store.add_file(StoredFile("file-in", "master", "batch", "in.jsonl", len(data), long_ago))
        for batch_id, status in (("batch_validating", "validating"), ("batch_finalizing", "finalizing")):
            await store.add_batch(Batch(batch_id, "master", "/v1/chat/completions", "file-in", "24h", long_ago,
                                        long_ago + 86400, status=status, total=3, outcome="completed",
                                        times={"finalizing_at": long_ago} if status == "finalizing" else {}))
        body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        await store.add_jobs([Job(f"job_{i}", "master", "chat", body, long_ago, status="succeeded", priority=-1,
                                  batch_id="batch_finalizing", line=i + 1, custom_id=f"r{i}", attempts=1,
                                  finished_at=long_ago, status_code=200, request_id=f"req_{i}",
                                  result=b'{"choices": []}') for i in range(3)])
        await store.aclose()

    asyncio.run(leave_behind())
    upstream = FakeUpstream().start()
    try:
        with gateway(config(upstream), tmp_path) as (base, _):
            sdk = openai.OpenAI(base_url=base + "/v1", api_key=MASTER, max_retries=0)
            deadline = time.time() + 15
            while {sdk.batches.retrieve(b).status for b in ("batch_validating", "batch_finalizing")} != {"completed"}:
                assert time.time() < deadline, [sdk.batches.retrieve(b).status for b in ("batch_validating",
                                                                                         "batch_finalizing")]
                time.sleep(0.1)
            for batch_id in ("batch_validating", "batch_finalizing"):
                done = sdk.batches.retrieve(batch_id)
                lines = jsonl(sdk.files.content(done.output_file_id).content)
                assert sorted(line["custom_id"] for line in lines) == ["r0", "r1", "r2"]
            assert len(upstream.seen) == 3  # only the batch that had not run yet called the upstream
    finally:
        upstream.stop()
