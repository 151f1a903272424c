"""The control plane: health, readiness, metrics and the OpenAPI docs (FastAPI).

The data-plane endpoints are raw ASGI for speed (see ``api/openai.py``); ``api/openapi.py`` adds them,
every error answer and the answers' bodies to this app's OpenAPI document, so ``/docs`` describes
every endpoint as it behaves.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from tokenway import __version__
from tokenway.api.openapi import openapi_document
from tokenway.errors import GatewayError, InternalError, InvalidRequest, MethodNotAllowed, NotFound
from tokenway.observability.metrics import Metrics


def control_app(
    is_ready: Callable[[], bool], metrics: Metrics | None = None, routers: Sequence[APIRouter] = (),
    metrics_auth: Callable[..., Awaitable[None]] | None = None, keyed: bool = False,
) -> FastAPI:
    """Health, readiness, ``/metrics`` (behind ``metrics_auth`` when given) and the routers' endpoints.
    ``keyed``: a master key is set, so every call but health, readiness and the docs needs a key."""
    app = FastAPI(title="tokenway", version=__version__, description="An OpenAI-compatible LLM gateway.")
    for router in routers:
        app.include_router(router)

    if metrics is not None:

        @app.get("/metrics", tags=["operations"], summary="Prometheus metrics (text exposition format)",
                 dependencies=[Depends(metrics_auth)] if metrics_auth is not None else [],
                 responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
        async def prometheus_metrics() -> Response:
            return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/health", tags=["operations"], summary="Liveness: the process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["operations"], summary="Readiness: models loaded and not draining",
             responses={503: {"description": "Starting up or draining", "content": {"application/json": {
                 "schema": {"type": "object", "properties": {"ready": {"const": False}}}}}}})
    async def ready() -> Response:
        ok = is_ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, error: GatewayError) -> Response:
        return _envelope(error)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return _envelope(NotFound("No such endpoint. The API lives under /v1 (see /docs)."))
        if exc.status_code == 405:
            allow = _allowed_methods(app, request.url.path)
            return _envelope(MethodNotAllowed(f"This endpoint takes {allow}, not {request.method}.",
                                              headers={"Allow": allow}))
        return _envelope(GatewayError(str(exc.detail)), status=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return _envelope(InvalidRequest(f"Invalid value for '{param}': {first['msg']}.", param=param))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> Response:
        # A bug: the client gets the envelope, not Starlette's plain-text 500; the server still logs the
        # traceback (Starlette raises the exception again once this answer is sent).
        return _envelope(InternalError("The gateway failed on this request; the error is in its log."))

    app.openapi = lambda: openapi_document(  # type: ignore[method-assign]
        app, keyed=keyed, metrics_keyed=metrics_auth is not None)
    return app


def _allowed_methods(app: FastAPI, path: str) -> str:
    """The methods the document lists at this path: Starlette's own Allow names one route's methods
    (``GET /admin/keys`` and ``POST /admin/keys`` are two routes). As OpenAPI matches paths, a
    concrete path goes before the templates it also fits (``/v1/async/completions``, ``/v1/async/{id}``)."""
    paths = app.openapi()["paths"]
    matching = [paths[path]] if path in paths else [
        operations for template, operations in paths.items()
        if re.fullmatch(re.sub(r"\\{[^/]+\\}", "[^/]+", re.escape(template)), path)
    ]
    return ", ".join(sorted({method.upper() for operations in matching for method in operations}))


def _envelope(error: GatewayError, status: int | None = None) -> Response:
    headers = {k.decode(): v.decode() for k, v in error.headers()}
    return Response(
        error.envelope(), status_code=status or error.status, media_type="application/json", headers=headers
    )
