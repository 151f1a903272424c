"""``GET /admin/status``, one page an operator reads first, and ``POST /admin/drain``, which starts the
same drain as SIGTERM (for a cloud's interruption notice or a preStop hook; see docs/drain.md).
The master key is required when one is set."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends

from tokenway import __version__
from tokenway.api.guards import require_master_key
from tokenway.config import GatewayConfig
from tokenway.deployments import ModelTable
from tokenway.routing.stats import RoutingStats


def status_router(
    config: GatewayConfig, models: ModelTable, routing: RoutingStats, queue_lengths: Callable[[], dict[str, int]],
    state: Callable[[], dict[str, bool]], begin_drain: Callable[[], bool], master_key: str | None,
) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_master_key(master_key))])
    started = time.time()

    @router.get("/status", summary="Version, config hash, readiness, deployments, queues, cache, routing")
    async def status() -> dict[str, Any]:
        return {
            "version": __version__,
            "config_hash": config.digest(),
            "uptime_s": round(time.time() - started, 1),
            **state(),
            "models": {name: [d.snapshot() for d in group] for name, group in models.items()},
            "queues": queue_lengths(),
            "cache": {
                "enabled": config.cache.enabled,
                "backend": config.cache.backend,
                "semantic_models": [m.name for m in config.models if m.cache.semantic],
            },
            "routing_decisions": routing.snapshot(),
        }

    @router.post("/drain", status_code=202,
                 summary="Start draining: /ready answers 503 and new calls are refused; calls in flight finish")
    async def drain() -> dict[str, bool]:
        # The process keeps serving what it has until its SIGTERM, which then stops it without the
        # drain delay: the load balancer has had its time since this call.
        return {"draining": True, "already_draining": not begin_drain()}

    return router
