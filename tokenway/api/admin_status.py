"""``GET /admin/status``: one page an operator reads first (master key required when set)."""

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
    state: Callable[[], dict[str, bool]], master_key: str | None,
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

    return router
