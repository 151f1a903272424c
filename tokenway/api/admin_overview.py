"""``GET /admin/overview``: live counters per model, in-flight calls, deployment health and spend today,
for the console's overview page and any script (master key or console session)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends

from tokenway.access import Access
from tokenway.api.guards import require_master_key
from tokenway.console.overview import OVERVIEW_SCHEMA, overview
from tokenway.deployments import ModelTable
from tokenway.observability.metrics import Metrics


def overview_router(metrics: Metrics | None, models: ModelTable, access: Access, master_key: str | None) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_master_key(master_key))])

    async def spend_today(since: float) -> list[dict[str, Any]]:
        await access.ledger.flush()  # so that this process's latest requests are counted
        return await access.db.usage_summary("model", since, time.time() + 1)

    @router.get("/overview", summary="Live counters per model, in-flight calls, health and spend today",
                responses={200: {"content": {"application/json": {"schema": OVERVIEW_SCHEMA}}}})
    async def get_overview() -> dict[str, Any]:
        return await overview(metrics, models, spend_today)

    return router
