"""The control plane: health, readiness, metrics and the OpenAPI docs (FastAPI).

The data-plane endpoints are raw ASGI for speed (see ``api/openai.py``); their request schemas
are added to this app's OpenAPI document so ``/docs`` describes every endpoint.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import TypeAdapter
from starlette.exceptions import HTTPException

from tokenway import __version__
from tokenway.errors import GatewayError, InvalidRequest, MethodNotAllowed, NotFound
from tokenway.observability.metrics import Metrics
from tokenway.protocol import CHAT_REQUEST, COMPLETION_REQUEST, SIMPLE_CHAT_REQUEST

_DATA_PLANE_DOCS: list[tuple[str, str, TypeAdapter[Any], str]] = [
    ("/v1/chat/completions", "Create a chat completion", CHAT_REQUEST,
     "OpenAI-compatible. `stream: true` answers with server-sent events ending `data: [DONE]`."),
    ("/v1/completions", "Create a text completion", COMPLETION_REQUEST,
     "OpenAI-compatible legacy completions; streams like chat."),
    ("/chat", "Simple chat", SIMPLE_CHAT_REQUEST,
     'Answers `{"content", "cached", "elapsed_ms"}`; with `stream: true`, SSE events `{"delta"}` '
     "then that object, then `[DONE]`."),
]


def control_app(
    is_ready: Callable[[], bool], metrics: Metrics | None = None, routers: Sequence[APIRouter] = (),
    metrics_auth: Callable[..., Awaitable[None]] | None = None,
) -> FastAPI:
    """Health, readiness, ``/metrics`` (behind ``metrics_auth`` when given) and the routers' endpoints."""
    app = FastAPI(title="tokenway", version=__version__, description="An OpenAI-compatible LLM gateway.")
    for router in routers:
        app.include_router(router)

    if metrics is not None:

        @app.get("/metrics", tags=["operations"], summary="Prometheus metrics (text exposition format)",
                 dependencies=[Depends(metrics_auth)] if metrics_auth is not None else [])
        async def prometheus_metrics() -> Response:
            return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/health", tags=["operations"], summary="Liveness: the process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["operations"], summary="Readiness: models loaded and not draining")
    async def ready() -> Response:
        ok = is_ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, error: GatewayError) -> Response:
        return _envelope(error)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return _envelope(NotFound("No such endpoint. The API lives under /v1 (see /docs)."))
        if exc.status_code == 405:
            return _envelope(MethodNotAllowed("This endpoint does not take that HTTP method."))
        return _envelope(GatewayError(str(exc.detail)), status=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return _envelope(InvalidRequest(f"Invalid value for '{param}': {first['msg']}.", param=param))

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _envelope(error: GatewayError, status: int | None = None) -> Response:
    headers = {k.decode(): v.decode() for k, v in error.headers()}
    return Response(
        error.envelope(), status_code=status or error.status, media_type="application/json", headers=headers
    )


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for path, summary, adapter, description in _DATA_PLANE_DOCS:
        body = adapter.json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        name = body.get("title", path.strip("/").replace("/", "_"))
        components[name] = body
        schema["paths"][path] = {
            "post": {
                "tags": ["openai"],
                "summary": summary,
                "description": description,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
                },
                "responses": {
                    "200": {"description": "The completion (JSON), or an SSE stream when `stream` is true."},
                    "400": {"description": "Invalid request (the error names the field)."},
                    "401": {"description": "Missing or wrong API key."},
                    "404": {"description": "Unknown model (the error lists the known ones)."},
                    "413": {"description": "Body over the size limit."},
                    "429": {"description": "Rate limited; see Retry-After."},
                    "502": {"description": "The backend failed."},
                    "503": {"description": "No capacity or still starting; see Retry-After."},
                    "504": {"description": "The backend timed out."},
                },
            }
        }
    app.openapi_schema = schema
    return schema
