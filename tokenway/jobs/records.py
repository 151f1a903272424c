"""What the job store keeps: jobs, files and batches, and how each looks on the wire.

A job is one request. An async job stands alone; a batch is a file of lines, each line a job that
points back at its batch. Times are unix seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]
FINISHED: tuple[JobStatus, ...] = ("succeeded", "failed", "cancelled", "expired")
ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
KINDS = {path: kind for kind, path in ENDPOINTS.items()}

BatchStatus = Literal[
    "validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled"]


@dataclass(slots=True)
class Job:
    id: str
    owner: str  # the key id that submitted it, or "master" / "anonymous": only the owner sees it
    kind: str  # "chat" or "completions": the live endpoint whose body it carries
    body: bytes  # the request body, validated at submit time
    created_at: float
    status: JobStatus = "queued"
    priority: int = 0  # within one owner's jobs: async jobs (0) run before batch lines (-1)
    batch_id: str | None = None
    line: int | None = None  # 1-based line of the batch input file
    custom_id: str | None = None
    idempotency_key: str | None = None
    body_hash: str | None = None  # of the body, to tell a retried submit from another request
    webhook_url: str | None = None
    attempts: int = 0  # times the request was sent through the policy list
    run_token: str | None = None  # the running attempt's claim: only its holder may record the result
    lease_until: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    status_code: int | None = None  # the HTTP status the live endpoint would have answered
    result: bytes | None = None  # the live endpoint's body (an error envelope when it failed)
    request_id: str | None = None  # the request id of the attempt that produced the result
    webhook_state: str | None = None  # pending, delivered, failed

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def public(self) -> dict[str, Any]:
        """``GET /v1/async/{id}``."""
        body = orjson.loads(self.body)
        out: dict[str, Any] = {
            "id": self.id, "object": "async.job", "status": self.status, "endpoint": ENDPOINTS[self.kind],
            "model": body.get("model"), "created_at": int(self.created_at),
            "started_at": _int(self.started_at), "finished_at": _int(self.finished_at),
            "attempts": self.attempts, "result": None, "error": None,
            "timings": {
                "queued_s": _round(((self.started_at or self.finished_at) or 0) - self.created_at)
                if (self.started_at or self.finished_at) else None,
                "run_s": _round(self.finished_at - self.started_at)
                if self.finished_at and self.started_at else None,
            },
        }
        if self.result is not None:
            key = "result" if self.status == "succeeded" else "error"
            out[key] = orjson.loads(self.result)
            if key == "error":
                out["error"] = out["error"].get("error", out["error"])
            out["status_code"] = self.status_code
        if self.webhook_url:
            out["webhook_url"] = self.webhook_url
            out["webhook_state"] = self.webhook_state
        if self.batch_id:
            out["batch_id"], out["custom_id"], out["line"] = self.batch_id, self.custom_id, self.line
        return out


@dataclass(slots=True)
class StoredFile:
    id: str
    owner: str
    purpose: str  # "batch" (uploaded), "batch_output", "batch_error"
    filename: str
    bytes: int
    created_at: float

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": int(self.created_at),
                "filename": self.filename, "purpose": self.purpose, "status": "processed", "expires_at": None,
                "status_details": None}


@dataclass(slots=True)
class Batch:
    id: str
    owner: str
    endpoint: str
    input_file_id: str
    completion_window: str
    created_at: float
    expires_at: float
    status: BatchStatus = "validating"
    metadata: dict[str, str] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None  # a batch that failed as a whole says why here
    times: dict[str, float] = field(default_factory=dict)  # in_progress_at, finalizing_at, completed_at, ...
    total: int = 0  # lines in the input file, valid or not
    outcome: BatchStatus | None = None  # what it ends as, decided when finalizing starts

    def public(self, counts: dict[str, int]) -> dict[str, Any]:
        """OpenAI's batch object; ``counts`` are the batch's lines by job status."""
        done = counts.get("succeeded", 0)
        failed = sum(counts.get(s, 0) for s in ("failed", "cancelled", "expired"))
        out: dict[str, Any] = {
            "id": self.id, "object": "batch", "endpoint": self.endpoint, "input_file_id": self.input_file_id,
            "completion_window": self.completion_window, "status": self.status,
            "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "created_at": int(self.created_at), "expires_at": int(self.expires_at),
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "request_counts": {"total": self.total, "completed": done, "failed": failed},
            "metadata": self.metadata,
        }
        for name in ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
                     "cancelling_at", "cancelled_at"):
            out[name] = _int(self.times.get(name))
        return out


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _round(value: float) -> float:
    return round(max(0.0, value), 3)
