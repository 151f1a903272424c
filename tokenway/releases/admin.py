"""``GET /admin/releases``: each released model's versions (weight, share of callers) next to what they
did, and its shadow's numbers beside them. The master key is required when one is set."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from tokenway.api.guards import require_master_key
from tokenway.config import GatewayConfig
from tokenway.releases.record import ReleaseRecord


def releases_router(config: GatewayConfig, record: ReleaseRecord, master_key: str | None) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_master_key(master_key))])

    @router.get("/releases", summary="Release versions and shadows side by side: traffic, errors, latency, "
                                     "tokens, cost")
    async def releases() -> dict[str, Any]:
        seen = record.snapshot()
        out: dict[str, Any] = {}
        for model in config.models:
            release = model.release
            if release is None:
                continue
            done = seen["models"].get(model.name, {})
            total = sum(v.weight for v in release.versions)
            out[model.name] = {
                "sticky_by": release.sticky_by,
                "versions": [{"version": v.name, "model": v.model, "weight": v.weight,
                              "share": round(v.weight / total, 4),
                              **(done.get("versions", {}).get(v.name) or {})} for v in release.versions],
                "shadow": None if release.shadow is None else {
                    "model": release.shadow.model, "percent": release.shadow.percent,
                    "max_concurrent": release.shadow.max_concurrent, "skipped": done.get("shadows_skipped", 0),
                    "by_version": done.get("shadow", {}),
                },
            }
        return {"models": out, "shadows_in_flight": seen["shadows_in_flight"]}

    return router
