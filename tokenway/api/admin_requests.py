"""``GET /admin/requests/{id}``: a recorded request with its routing story (master key).

Only requests the ``record:`` config chose are there (docs/replay.md); the route exists only while
recording is on.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends

from tokenway.api.guards import require_master_key
from tokenway.errors import NotFound
from tokenway.replay.recorder import Recorder


def requests_router(recorder: Recorder, retention_s: float, master_key: str | None) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_master_key(master_key))])

    @router.get("/requests/{request_id}", summary="A recorded request: body, routing story, answer, timings")
    async def recorded(request_id: str) -> dict[str, Any]:
        await recorder.flush()  # this process's latest records are written first
        doc = await recorder.store.get(request_id)
        if doc is None or doc["ts"] < time.time() - retention_s:
            raise NotFound(f"No recorded request {request_id!r}: it was not chosen for recording (record.models, "
                           "record.keys, record.sample), or it is past record.retention_s or the record.max_records "
                           "cap.")
        return doc

    return router
