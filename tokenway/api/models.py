"""``GET /v1/models`` and ``/v1/models/{model}``: the models the caller may use.

With a master key set, listing needs a key like any other call: the master key sees every model,
a virtual key only those on its allow-list, and a model it may not use is the same 404 as one
that does not exist (as OpenAI answers). An open gateway (no master key) lists every model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request

from tokenway.api.callers import Callers
from tokenway.errors import ModelNotFound


def models_router(names: Callable[[], list[str]], callers: Callers, created: int) -> APIRouter:
    """``names``: the public model names (the routers of ``tiers:`` included)."""
    router = APIRouter(tags=["openai"])

    def describe(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "tokenway"}

    @router.get("/v1/models", summary="List the models this key may use")
    async def list_models(request: Request) -> dict[str, Any]:
        _, key = callers.identify(request)
        allowed = [name for name in names() if key is None or key.allows(name)]
        return {"object": "list", "data": [describe(name) for name in allowed]}

    @router.get("/v1/models/{model}", summary="Describe one model")
    async def get_model(model: str, request: Request) -> dict[str, Any]:
        _, key = callers.identify(request)
        if model not in names() or (key is not None and not key.allows(model)):
            raise ModelNotFound(f"The model '{model}' does not exist or this key may not use it; GET /v1/models "
                                "lists the ones it may.", param="model")
        return describe(model)

    return router
