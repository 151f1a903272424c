"""The async API: ``POST /v1/async/chat/completions`` (or ``/completions``) → 202 and a job id;
``GET /v1/async/{id}`` for its status and result; ``POST /v1/async/{id}/cancel``; ``GET /v1/async``.
And ``/admin/jobs`` (master key): every tenant's jobs and the queue's state.

A submit takes exactly the live endpoint's body (plus an optional ``webhook_url``) and is checked
as the live endpoint checks it, at submit time: a bad field, an unknown model, a key that may not
use the model are answered now, not found out by a worker later. Each caller sees only its own
jobs; another tenant's id is a 404, the same as an id that never existed.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import FileResponse, Response

from tokenway.api.callers import Callers
from tokenway.api.guards import require_master_key
from tokenway.jobs.records import Job
from tokenway.jobs.service import JobService
from tokenway.jobs.webhooks import check_webhook_url

JobStatusFilter = Query(default=None, pattern="^(queued|running|succeeded|failed|cancelled|expired)$")


def jobs_router(service: JobService, callers: Callers, master_key: str | None) -> APIRouter:
    router = APIRouter(tags=["jobs"])

    async def submit(kind: str, request: Request, idempotency_key: str | None) -> Response:
        raw = await request.body()
        try:
            fields = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            fields = None
        model = fields.get("model") if isinstance(fields, dict) and isinstance(fields.get("model"), str) else None
        owner, key = callers.identify(request, model)
        webhook_url = None
        if isinstance(fields, dict) and "webhook_url" in fields:
            webhook_url = check_webhook_url(fields.pop("webhook_url"), service.config.webhooks)
            raw = orjson.dumps(fields)
        body = callers.check_request(kind, raw, key)
        job, created = await service.submit(owner, kind, orjson.dumps(body), idempotency_key, webhook_url)
        headers = {} if created else {"idempotent-replayed": "true"}
        return Response(orjson.dumps(job.public()), status_code=202, media_type="application/json", headers=headers)

    @router.post("/v1/async/chat/completions", status_code=202, summary="Submit a chat completion as a job",
                 openapi_extra=_live_body("ChatCompletionRequest"))
    async def submit_chat(request: Request, idempotency_key: Annotated[str | None, Header()] = None) -> Response:
        return await submit("chat", request, idempotency_key)

    @router.post("/v1/async/completions", status_code=202, summary="Submit a text completion as a job",
                 openapi_extra=_live_body("CompletionRequest"))
    async def submit_completion(request: Request,
                                idempotency_key: Annotated[str | None, Header()] = None) -> Response:
        return await submit("completions", request, idempotency_key)

    @router.get("/v1/async", summary="List your jobs, newest first")
    async def list_jobs(request: Request, status: str | None = JobStatusFilter,
                        limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None) -> dict[str, Any]:
        jobs = await service.store.list_jobs(callers.owner(request), status, limit + 1, after)
        return page([job.public() for job in jobs], limit)

    @router.get("/v1/async/{job_id}", summary="A job's status, result or error, attempts and timings")
    @router.get("/v1/async/completions/{job_id}", include_in_schema=False)
    @router.get("/v1/async/chat/completions/{job_id}", include_in_schema=False)
    async def get_job(job_id: str, request: Request) -> dict[str, Any]:
        return (await service.job(callers.owner(request), job_id)).public()

    @router.post("/v1/async/{job_id}/cancel", summary="Cancel a queued or running job")
    async def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
        return (await service.cancel(callers.owner(request), job_id)).public()

    admin = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_master_key(master_key))])

    @admin.get("/jobs", summary="Every tenant's jobs, and the queue's state")
    async def admin_jobs(status: str | None = JobStatusFilter, owner: str | None = None,
                         limit: Annotated[int, Query(ge=1, le=500)] = 50, after: str | None = None) -> dict[str, Any]:
        counts = await service.counts()
        jobs = await service.store.list_jobs(owner, status, limit + 1, after)
        batches = await service.store.list_batches(owner, 20, None)
        return {
            "counts": counts.by_status, "oldest_queued_at": counts.oldest_queued_at,
            "jobs": page([_admin_view(job) for job in jobs], limit),
            "batches": [await service.batch_view(batch) | {"owner": batch.owner} for batch in batches],
        }

    @admin.post("/jobs/{job_id}/cancel", summary="Cancel any tenant's queued or running job")
    async def admin_cancel_job(job_id: str) -> dict[str, Any]:
        return _admin_view(await service.cancel(None, job_id))

    @admin.post("/batches/{batch_id}/cancel", summary="Cancel any tenant's batch")
    async def admin_cancel_batch(batch_id: str) -> dict[str, Any]:
        batch = await service.cancel_batch(None, batch_id)
        return await service.batch_view(batch) | {"owner": batch.owner}

    @admin.get("/files/{file_id}/content", summary="Any tenant's file (a batch's input, results or errors)",
               response_class=FileResponse, responses={200: {"content": {"application/octet-stream": {
                   "schema": {"type": "string", "format": "binary"}}}}})
    async def admin_file_content(file_id: str) -> FileResponse:
        record = await service.file(None, file_id)
        return FileResponse(service.contents.path(record.id), media_type="application/octet-stream",
                            filename=record.filename)

    router.include_router(admin)
    return router


def _live_body(schema: str) -> dict[str, Any]:
    """The OpenAPI request body of a submit: the live endpoint's (its schema is in the document), plus an
    optional ``webhook_url``."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {"allOf": [
        {"$ref": f"#/components/schemas/{schema}"},
        {"type": "object", "properties": {"webhook_url": {"type": "string", "format": "uri"}}},
    ]}}}}}


def _admin_view(job: Job) -> dict[str, Any]:
    return job.public() | {"owner": job.owner}


def page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """OpenAI's list shape; the caller fetched ``limit + 1`` rows to know whether there are more."""
    data = items[:limit]
    return {"object": "list", "data": data, "has_more": len(items) > limit,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
