"""Jobs on a fleet: gateways queue on Celery, ``tokenway worker`` processes run the jobs.

Real processes throughout: a gateway (``tokenway serve`` with TOKENWAY_JOBS_BROKER_URL), worker
processes, Postgres as the shared job store and ledger, a shared files directory, Redis (and once
RabbitMQ) as the broker, and a scripted upstream that answers after a delay.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import redis

from tests.access_support import create_key, drop_schema, gateway_process, pg_schema, pg_url
from tests.celery_support import (
    RABBITMQ_BROKER,
    REDIS_BROKER,
    SlowUpstream,
    drop_rabbitmq_queues,
    drop_redis_keys,
    fleet_config,
    new_prefix,
    pg_fetch,
    wait_for,
    worker_process,
)
from tests.jobs_support import auth, batch_lines, jsonl, wait_job
from tests.servers import free_port
from tokenway.config import parse_config
from tokenway.jobs.celery_dispatch import TASK, celery_app, queue_for, queue_names
from tokenway.jobs.records import Job

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Fleet:
    """A gateway and what its workers share with it: the config file, the env, the job store's schema."""

    config: Path
    env: dict[str, str]
    schema: str
    prefix: str
    tmp: Path
    base: str = ""  # the gateway's URL
    test: str = ""  # the test running: its workers' log files are named after it

    def worker(self, name: str, concurrency: int = 4, *args: str) -> AbstractContextManager[subprocess.Popen[bytes]]:
        return worker_process(self.config, self.env, self.log(name), concurrency, *args)

    def log(self, name: str) -> Path:
        return self.tmp / f"{self.test}-{name}.log"

    def wait_ready(self, name: str) -> None:
        wait_for(lambda: '"logger":"celery.apps.worker","message":"tokenway-' in self.log(name).read_text(), 30,
                 f"worker {name} to be ready")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.tmp.glob(f"{self.test}-*.log")))


@contextmanager
def fleet(upstream: SlowUpstream, tmp: Path, broker: str) -> Iterator[Fleet]:
    """A gateway (``tokenway serve``) queueing on ``broker``; workers are started by each test."""
    schema, prefix = pg_schema(), new_prefix()
    config = tmp / "tokenway.yaml"
    config.write_text(fleet_config(upstream, prefix))
    (tmp / "data").mkdir()
    env = {"TOKENWAY_DATABASE_URL": pg_url(schema), "TOKENWAY_JOBS_BROKER_URL": broker,
           "TOKENWAY_FILES_DIR": str(tmp / "files"), "TOKENWAY_DATA_DIR": str(tmp / "data"),
           "TOKENWAY_MASTER_KEY": "sk-master-test"}
    try:
        with gateway_process(config, tmp / "data", **env) as base:
            yield Fleet(config, env, schema, prefix, tmp, base)
    finally:
        drop_schema(schema)
        if broker.startswith("redis"):
            drop_redis_keys(prefix)
        else:
            drop_rabbitmq_queues(queue_names(parse_config(config.read_text()).jobs))


@pytest.fixture(scope="module")
def upstream() -> Iterator[SlowUpstream]:
    server = SlowUpstream(first_delay=0.0, chunk_delay=0.0).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_fleet(upstream: SlowUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with fleet(upstream, tmp_path_factory.mktemp("fleet"), REDIS_BROKER) as f:
        yield f


@pytest.fixture
def on_redis(redis_fleet: Fleet, upstream: SlowUpstream, request: pytest.FixtureRequest) -> Fleet:
    """The module's gateway, for one test: the upstream's record and delay start afresh."""
    upstream.seen.clear()
    upstream.delay = 0.05
    redis_fleet.test = request.node.name
    return redis_fleet


def ledger(f: Fleet, column: str, value: str) -> list[tuple[str, int]]:
    return pg_fetch(f.schema, f"SELECT job_id, status FROM tokenway_usage WHERE {column} = $1", value)


def test_an_async_job_runs_on_a_worker_and_overtakes_a_queued_batch(upstream: SlowUpstream, on_redis: Fleet) -> None:
    upstream.delay = 0.2
    base = on_redis.base
    port = free_port()
    with on_redis.worker("w1", 2, "--metrics-port", str(port)):
        key = create_key(base, name="reports")["key"]
        sdk = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
        uploaded = sdk.files.create(file=("in.jsonl", batch_lines(40)), purpose="batch")
        batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                   completion_window="24h")
        wait_for(lambda: sdk.batches.retrieve(batch.id).status == "in_progress", 10, "the batch to start")
        r = httpx.post(base + "/v1/async/chat/completions", json=CHAT, headers=auth(key))
        assert r.status_code == 202, r.text
        job = wait_job(base, key, r.json()["id"], timeout=30)
        assert job["status"] == "succeeded", (job, on_redis.logs())
        assert job["result"]["choices"][0]["message"]["content"] == "Hello from the fake upstream."
        assert job["attempts"] == 1
        # Behind 40 queued lines on 2 threads (4 s of work), the async job took one of the next free threads.
        counts = sdk.batches.retrieve(batch.id).request_counts
        assert counts.completed + counts.failed < 20, counts
        sdk.batches.cancel(batch.id)  # the rest of the batch is not for the next test's workers
        wait_for(lambda: sdk.batches.retrieve(batch.id).status == "cancelled", 10, "the batch to stop")
        assert wait_for(lambda: ledger(on_redis, "job_id", job["id"]), 5, "the job's ledger row") == [(job["id"], 200)]
        # The worker made the calls: its own /metrics shows them.
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'tokenway_jobs_finished_total{kind="async",status="succeeded"} 1.0' in scraped


def test_two_keys_batches_take_turns_on_the_workers(upstream: SlowUpstream, on_redis: Fleet) -> None:
    upstream.delay = 0.2
    queues = queue_names(parse_config(on_redis.config.read_text()).jobs)

    def lane(key: dict[str, str]) -> str:
        return queue_for(Job(id="", owner=key["id"], kind="chat", body=b"", created_at=0, batch_id="b"), queues)

    big = create_key(on_redis.base)
    small = create_key(on_redis.base)
    while lane(small) == lane(big):  # a key's lines share a lane; two keys in one lane go in turn of arrival
        small = create_key(on_redis.base)
    sdks = [openai.OpenAI(base_url=on_redis.base + "/v1", api_key=k["key"], max_retries=0) for k in (big, small)]
    batches = []
    with on_redis.worker("w1", concurrency=2):
        for sdk, lines in zip(sdks, (40, 4), strict=True):
            uploaded = sdk.files.create(file=("in.jsonl", batch_lines(lines)), purpose="batch")
            batches.append(sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                              completion_window="24h"))
            wait_for(lambda sdk=sdk: sdk.batches.retrieve(batches[-1].id).status == "in_progress", 10,  # type: ignore[misc]
                     "the batch to start")
        wait_for(lambda: sdks[1].batches.retrieve(batches[1].id).status == "completed", 30, "the small batch")
        # 4 s of work queued ahead of it on 2 threads; taking turns, the small batch was done in about 1 s.
        assert sdks[0].batches.retrieve(batches[0].id).request_counts.completed < 30
        sdks[0].batches.cancel(batches[0].id)  # the rest is not for the next test's workers
        wait_for(lambda: sdks[0].batches.retrieve(batches[0].id).status == "cancelled", 10, "the batch to stop")


def test_the_sdk_runs_a_batch_end_to_end_on_celery_workers(upstream: SlowUpstream, on_redis: Fleet) -> None:
    data = batch_lines(30) + b'{"custom_id": "broken"\n'
    base = on_redis.base
    upstream.delay = 0.2  # 30 lines on 8 threads: long enough for both workers to take some
    with on_redis.worker("w1"), on_redis.worker("w2"):
        on_redis.wait_ready("w1")
        on_redis.wait_ready("w2")
        sdk = openai.OpenAI(base_url=base + "/v1", api_key=create_key(base)["key"], max_retries=0)
        uploaded = sdk.files.create(file=("input.jsonl", data), purpose="batch")
        batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                   completion_window="24h")
        done = wait_for(lambda: (b := sdk.batches.retrieve(batch.id)).status in ("completed", "failed") and b,
                        40, "the batch to finish")
        assert done.status == "completed", (done, on_redis.logs())
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (31, 30, 1)
        output = jsonl(sdk.files.content(done.output_file_id).content)
        assert sorted(line["custom_id"] for line in output) == sorted(f"r{i}" for i in range(30))
        assert all(line["response"]["status_code"] == 200 for line in output)
        errors = jsonl(sdk.files.content(done.error_file_id).content)
        assert [line["error"]["line"] for line in errors] == [31]
        assert len(upstream.seen) == 30
        # Both workers ran lines: the batch queue is shared.
        logs = [on_redis.log(name).read_text() for name in ("w1", "w2")]
        assert all(log.count('"event":"request"') > 0 for log in logs), on_redis.logs()


def test_a_killed_worker_leaves_no_line_without_its_one_result(upstream: SlowUpstream, on_redis: Fleet) -> None:
    upstream.delay = 0.2
    lines = 60
    base = on_redis.base
    sdk = openai.OpenAI(base_url=base + "/v1", api_key=create_key(base)["key"], max_retries=0)
    uploaded = sdk.files.create(file=("input.jsonl", batch_lines(lines)), purpose="batch")
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                               completion_window="24h")
    with on_redis.worker("doomed") as doomed:
        wait_for(lambda: sdk.batches.retrieve(batch.id).request_counts.completed >= 8, 30,
                 "the first worker to get going")
        doomed.send_signal(signal.SIGKILL)  # mid-batch, four lines in flight
        doomed.wait(5)
    in_flight = pg_fetch(on_redis.schema, "SELECT count(*) FROM tokenway_jobs WHERE batch_id = $1 AND "
                                          "status = 'running'", batch.id)[0][0]
    assert in_flight > 0
    time.sleep(4.5)  # the Redis visibility timeout: the next worker finds the dead one's messages due
    with on_redis.worker("successor"):
        done = wait_for(lambda: (b := sdk.batches.retrieve(batch.id)).status == "completed" and b, 45,
                        "the batch to finish on the second worker")
    assert (done.request_counts.completed, done.request_counts.failed) == (lines, 0), on_redis.logs()
    output = jsonl(sdk.files.content(done.output_file_id).content)
    assert sorted(line["custom_id"] for line in output) == sorted(f"r{i}" for i in range(lines))  # once each
    assert done.error_file_id is None
    retried = pg_fetch(on_redis.schema, "SELECT count(*) FROM tokenway_jobs WHERE batch_id = $1 AND attempts > 1",
                       batch.id)[0][0]
    assert retried >= in_flight  # the lines the dead worker was running ran again
    # The ledger shows every call the upstream answered: each line's, and the dead worker's
    # calls that finished before the kill (written ahead, replayed by the successor).
    rows = wait_for(lambda: (r := ledger(on_redis, "batch_id", batch.id)) and len(r) >= lines and r, 10,
                    "the ledger rows")
    assert {job_id for job_id, status in rows if status == 200} == set(
        r[0] for r in pg_fetch(on_redis.schema, "SELECT id FROM tokenway_jobs WHERE batch_id = $1", batch.id))
    assert len(rows) <= len(upstream.seen)


def test_sigterm_lets_a_worker_finish_its_running_jobs(upstream: SlowUpstream, on_redis: Fleet) -> None:
    upstream.delay = 2.0
    base = on_redis.base
    key = create_key(base)["key"]
    client = redis.Redis.from_url(REDIS_BROKER)
    unacked = f"{on_redis.prefix}:unacked"  # messages taken by a worker and not acknowledged
    before = set(client.hkeys(unacked))  # a killed worker's, in an earlier test
    with on_redis.worker("w1", concurrency=2) as worker:
        ids = [httpx.post(base + "/v1/async/chat/completions", json=CHAT, headers=auth(key)).json()["id"]
               for _ in range(2)]
        wait_for(lambda: all(httpx.get(f"{base}/v1/async/{i}", headers=auth(key)).json()["status"] == "running"
                             for i in ids), 20, "both jobs to run")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0
    for job_id in ids:
        job = httpx.get(f"{base}/v1/async/{job_id}", headers=auth(key)).json()
        assert job["status"] == "succeeded" and job["attempts"] == 1, (job, on_redis.logs())
    assert len(upstream.seen) == 2
    assert set(client.hkeys(unacked)) <= before  # both messages acknowledged
    client.close()


def test_a_second_message_for_a_running_job_waits_then_runs_nothing(upstream: SlowUpstream, on_redis: Fleet) -> None:
    upstream.delay = 3.0  # long enough for the copy to arrive while the job runs, on a busy box too
    base = on_redis.base
    with on_redis.worker("w1", 2, "--loglevel", "debug"):  # with Celery's line for each task
        on_redis.wait_ready("w1")
        key = create_key(base)["key"]  # new to the worker: it loads the key when the job needs it
        job_id = httpx.post(base + "/v1/async/chat/completions", json=CHAT, headers=auth(key)).json()["id"]
        wait_for(lambda: httpx.get(f"{base}/v1/async/{job_id}", headers=auth(key)).json()["status"] == "running",
                 20, "the job to run")
        # A copy of its message, as a redelivery would make: the claim is held, so the copy retries
        # (Celery's retry, back onto the same queue) until the job is done, then is dropped.
        app = celery_app(REDIS_BROKER, parse_config(on_redis.config.read_text()).jobs)
        copy = app.send_task(TASK, args=(job_id,), queue=f"{on_redis.prefix}.jobs").id
        app.close()
        assert wait_job(base, key, job_id, timeout=20)["attempts"] == 1
        log = on_redis.log("w1")
        wait_for(lambda: f"{copy}] succeeded" in log.read_text(), 15, "the copy to be dropped")
        assert f"{copy}] retry: Retry in" in log.read_text()
        assert len(upstream.seen) == 1


def test_a_job_whose_message_the_broker_lost_is_sent_again(upstream: SlowUpstream, on_redis: Fleet) -> None:
    base = on_redis.base
    key = create_key(base)["key"]
    job_id = httpx.post(base + "/v1/async/chat/completions", json=CHAT, headers=auth(key)).json()["id"]
    client = redis.Redis.from_url(REDIS_BROKER)
    queue = f"{on_redis.prefix}:{on_redis.prefix}.jobs"
    wait_for(lambda: client.llen(queue) == 1, 10, "the job's message")
    client.delete(queue)  # a Redis broker restarted without persistence
    client.close()
    with on_redis.worker("w1", concurrency=2):
        job = wait_job(base, key, job_id, timeout=30)
    assert job["status"] == "succeeded" and len(upstream.seen) == 1, on_redis.logs()


def test_a_rabbitmq_broker_runs_an_async_job(upstream: SlowUpstream, tmp_path: Path) -> None:
    upstream.delay = 0.05
    with fleet(upstream, tmp_path, RABBITMQ_BROKER) as f, f.worker("w1", concurrency=2):
        key = create_key(f.base)["key"]
        r = httpx.post(f.base + "/v1/async/chat/completions", json=CHAT, headers=auth(key))
        assert r.status_code == 202, r.text
        job = wait_job(f.base, key, r.json()["id"], timeout=30)
        assert job["status"] == "succeeded", (job, f.logs())


def test_a_worker_without_a_broker_says_what_to_set(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TOKENWAY_JOBS_BROKER_URL", "TOKENWAY_REDIS_URL")}
    done = subprocess.run([sys.executable, "-m", "tokenway", "worker"], env=env, capture_output=True, timeout=60)
    assert done.returncode == 2 and b"TOKENWAY_JOBS_BROKER_URL" in done.stderr
