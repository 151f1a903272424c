"""Helpers for the job tests: waiting on a job or a batch over HTTP, batch input files."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_job(base: str, key: str, job_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """Poll ``GET /v1/async/{id}`` until the job has finished."""
    deadline = time.time() + timeout
    while True:
        job = httpx.get(f"{base}/v1/async/{job_id}", headers=auth(key)).json()
        if job["status"] in ("succeeded", "failed", "cancelled", "expired"):
            return job
        assert time.time() < deadline, f"job {job_id} still {job['status']} after {timeout}s"
        time.sleep(0.05)


def batch_lines(count: int, model: str = "m", start: int = 0, **body: Any) -> bytes:
    """A JSONL input file of ``count`` chat requests, custom ids ``r<n>``."""
    return b"".join(orjson.dumps({
        "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": f"question {i}"}], **body},
    }) + b"\n" for i in range(start, start + count))


def jsonl(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]
