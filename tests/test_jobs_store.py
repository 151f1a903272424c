"""The job store's contract, on SQLite and on Postgres: claims are fenced, leases run out, idempotency
keys are per owner, retention deletes only what is old and unused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.access_support import drop_schema, pg_schema, pg_url
from tokenway.jobs.records import Batch, Job, StoredFile
from tokenway.jobs.store import JobStore, open_job_store

BODY = b'{"model": "m", "messages": []}'


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    schema = await asyncio.to_thread(pg_schema) if request.param == "postgres" else None
    opened = open_job_store(pg_url(schema) if schema else None, tmp_path)
    await opened.start()
    try:
        yield opened
    finally:
        await opened.aclose()
        if schema:
            await asyncio.to_thread(drop_schema, schema)


def job(job_id: str, owner: str = "key_a", **fields: object) -> Job:
    return Job(job_id, owner, "chat", BODY, time.time(), **fields)  # type: ignore[arg-type]


async def test_a_claim_is_fenced_by_its_token(store: JobStore) -> None:
    await store.add_jobs([job("j1"), job("j2", priority=5), job("j3", owner="key_b")])
    now = time.time()
    claimed = await store.claim("key_a", 5, "t1", now + 30, now)
    assert [j.id for j in claimed] == ["j2", "j1"] and all(j.attempts == 1 for j in claimed)
    assert await store.claim("key_a", 5, "t2", now + 30, now) == []
    assert await store.claim_job("j1", "t2", now + 30, now) is None  # held, lease not run out
    # The lease runs out: another claim takes it with a new token; the old run can no longer finish it.
    stolen = await store.claim_job("j1", "t2", now + 60, now + 31)
    assert stolen is not None and stolen.attempts == 2
    old = claimed[1]
    old.status, old.result, old.finished_at = "succeeded", b"{}", now
    assert await store.finish([old]) == [False]
    stolen.status, stolen.result, stolen.finished_at = "succeeded", b"{}", now
    assert await store.finish([stolen]) == [True]
    assert (await store.get_job("j1")).status == "succeeded"  # type: ignore[union-attr]
    assert await store.renew(["t1", "t2"], now + 90) == {"j2"}


async def test_cancel_and_requeue(store: JobStore) -> None:
    await store.add_jobs([job("j1"), job("j2")])
    now = time.time()
    await store.claim("key_a", 1, "t", now + 1, now)
    assert (await store.cancel_job("j2", now)).status == "cancelled"  # type: ignore[union-attr]
    assert await store.cancel_job("j2", now) is None
    assert await store.requeue_expired(now + 5) == 1
    assert (await store.get_job("j1")).status == "queued"  # type: ignore[union-attr]
    counts, oldest = await store.status_counts()
    assert counts == {"queued": 1, "cancelled": 1} and oldest is not None


async def test_idempotency_keys_belong_to_their_owner(store: JobStore) -> None:
    _, created = await store.add_job(job("j1", idempotency_key="k"))
    again, again_created = await store.add_job(job("j2", idempotency_key="k"))
    other, other_created = await store.add_job(job("j3", owner="key_b", idempotency_key="k"))
    assert created and not again_created and again.id == "j1" and other_created and other.id == "j3"
    assert (await store.find_job("key_a", "k")).id == "j1"  # type: ignore[union-attr]


async def test_purge_deletes_only_what_is_old_and_unused(store: JobStore) -> None:
    old, now = time.time() - 100 * 86400, time.time()
    await store.add_file(StoredFile("file-old", "key_a", "batch", "a.jsonl", 1, old))
    await store.add_file(StoredFile("file-in-use", "key_a", "batch", "b.jsonl", 1, old))
    await store.add_file(StoredFile("file-new", "key_a", "batch", "c.jsonl", 1, now))
    await store.add_batch(Batch("batch_done", "key_a", "/v1/chat/completions", "file-old", "24h", old, old,
                                status="completed", times={"completed_at": old}))
    await store.add_batch(Batch("batch_running", "key_a", "/v1/chat/completions", "file-in-use", "24h", old,
                                now + 3600, status="in_progress"))
    await store.add_jobs([job("line", batch_id="batch_done", line=1, status="succeeded", finished_at=old),
                          job("async-old", status="succeeded", finished_at=old),
                          job("async-new", status="succeeded", finished_at=now)])
    assert sorted(await store.purge(now - 30 * 86400)) == ["file-old"]
    assert await store.get_batch("batch_done") is None and await store.get_batch("batch_running") is not None
    assert await store.get_job("line") is None and await store.get_job("async-old") is None
    assert await store.get_job("async-new") is not None


async def test_pending_webhooks_are_found_for_a_resend(store: JobStore) -> None:
    ended = time.time() - 600
    await store.add_jobs([job("j1", webhook_url="http://h/x", webhook_state="pending", status="succeeded",
                              finished_at=ended),
                          job("j2", webhook_url="http://h/x", webhook_state="delivered", status="succeeded",
                              finished_at=ended)])
    assert [j.id for j in await store.pending_webhooks(time.time() - 300, 10)] == ["j1"]
    await store.set_webhook_state("j1", "delivered")
    assert await store.pending_webhooks(time.time(), 10) == []
