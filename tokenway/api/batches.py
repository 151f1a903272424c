"""OpenAI's Files and Batch APIs, so the official SDK runs batches unmodified.

``POST /v1/files`` (multipart, ``purpose=batch``), ``GET /v1/files[/{id}[/content]]``,
``DELETE /v1/files/{id}``; ``POST /v1/batches``, ``GET /v1/batches[/{id}]``,
``POST /v1/batches/{id}/cancel``. Each key sees only its own files and batches.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from starlette.datastructures import UploadFile

from tokenway.api.callers import Callers
from tokenway.api.jobs import page
from tokenway.errors import InvalidRequest, PayloadTooLarge
from tokenway.jobs.service import JobService

_FORM_SLACK = 64 * 1024  # multipart boundaries and the other fields, beyond the file itself


def batches_router(service: JobService, callers: Callers) -> APIRouter:
    router = APIRouter(tags=["batches"])
    limit_bytes = service.config.max_file_bytes

    @router.post("/v1/files", summary="Upload a JSONL file of batch requests (purpose=batch)")
    async def upload(request: Request) -> dict[str, Any]:
        owner = callers.owner(request)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit_bytes + _FORM_SLACK:
            raise PayloadTooLarge(f"The file is larger than this gateway's limit of {limit_bytes} bytes "
                                  "(jobs.max_file_bytes).", param="file")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise InvalidRequest("Upload the file as multipart/form-data with fields 'file' and 'purpose'.",
                                 param="file")
        async with request.form(max_files=1, max_fields=8) as form:
            upload, purpose = form.get("file"), form.get("purpose")
            if not isinstance(upload, UploadFile):
                raise InvalidRequest("Missing required parameter: 'file'.", param="file")
            if not isinstance(purpose, str):
                raise InvalidRequest("Missing required parameter: 'purpose'.", param="purpose")
            record = await service.upload(owner, upload.filename or "upload.jsonl", purpose, _chunks(upload))
        return record.public()

    @router.get("/v1/files", summary="List your files")
    async def list_files(request: Request, purpose: str | None = None,
                         limit: Annotated[int, Query(ge=1, le=10000)] = 100, after: str | None = None
                         ) -> dict[str, Any]:
        files = await service.store.list_files(callers.owner(request), purpose, limit + 1, after)
        return page([f.public() for f in files], limit)

    @router.get("/v1/files/{file_id}", summary="A file's details")
    async def get_file(file_id: str, request: Request) -> dict[str, Any]:
        return (await service.file(callers.owner(request), file_id)).public()

    @router.delete("/v1/files/{file_id}", summary="Delete a file")
    async def delete_file(file_id: str, request: Request) -> dict[str, Any]:
        record = await service.delete_file(callers.owner(request), file_id)
        return {"id": record.id, "object": "file", "deleted": True}

    @router.get("/v1/files/{file_id}/content", summary="A file's contents")
    async def file_content(file_id: str, request: Request) -> FileResponse:
        record = await service.file(callers.owner(request), file_id)
        return FileResponse(service.contents.path(record.id), media_type="application/octet-stream",
                            filename=record.filename)

    @router.post("/v1/batches", summary="Run a file of requests as a batch")
    async def create_batch(request: Request) -> dict[str, Any]:
        owner = callers.owner(request)
        try:
            fields = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            fields = None
        if not isinstance(fields, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if name not in fields:
                raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name,
                                     code="missing_required_parameter")

        batch = await service.create_batch(owner, fields["input_file_id"], fields["endpoint"],
                                           fields["completion_window"], fields.get("metadata"))
        return await service.batch_view(batch)

    @router.get("/v1/batches", summary="List your batches, newest first")
    async def list_batches(request: Request, limit: Annotated[int, Query(ge=1, le=100)] = 20,
                           after: str | None = None) -> dict[str, Any]:
        batches = await service.store.list_batches(callers.owner(request), limit + 1, after)
        return page([await service.batch_view(b) for b in batches], limit)

    @router.get("/v1/batches/{batch_id}", summary="A batch's status and request counts")
    async def get_batch(batch_id: str, request: Request) -> dict[str, Any]:
        return await service.batch_view(await service.batch(callers.owner(request), batch_id))

    @router.post("/v1/batches/{batch_id}/cancel", summary="Cancel a batch")
    async def cancel_batch(batch_id: str, request: Request) -> dict[str, Any]:
        return await service.batch_view(await service.cancel_batch(callers.owner(request), batch_id))

    return router


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(1 << 16):
        yield chunk
