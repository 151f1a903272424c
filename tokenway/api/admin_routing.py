"""``/admin/deployments`` and ``/admin/routing``: live routing state for operators.

Per deployment: in-flight calls, breaker state and window, health, TTFT EWMA, the engine's
scraped queue and KV use, picks and failures; for deployment entries with a ``discovery`` block,
the workers found, those waiting to join (and why) and those leaving. Routing decisions counted by
reason (the same ``RoutingStats`` a metrics exporter reads). The master key is required when one is set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends

from tokenway.api.guards import require_master_key
from tokenway.deployments import ModelTable
from tokenway.routing.stats import RoutingStats


def routing_router(
    models: ModelTable, stats: RoutingStats, master_key: str | None, discovery: Callable[[], dict[str, Any]],
) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_master_key(master_key))])

    @router.get("/deployments", summary="Every deployment's load, breaker and health")
    async def deployments() -> dict[str, Any]:
        return {
            "models": {name: [d.snapshot() for d in group] for name, group in models.items()},
            "discovery": discovery(),
        }

    @router.get("/routing", summary="Routing decisions counted by reason")
    async def routing() -> dict[str, Any]:
        return {"decisions": stats.snapshot()}

    return router
