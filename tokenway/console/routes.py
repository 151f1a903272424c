"""The console's own routes: its pages and assets under ``/ui``, and logging in and out.

Everything else the pages show or change goes through the admin API (``/admin/...``), which takes
the session cookie issued here as it takes the master key (``api/guards.py``).
"""

from __future__ import annotations

import hashlib
import hmac
from importlib.resources import files
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import RedirectResponse, Response

from tokenway.api.client_address import TrustedProxies
from tokenway.console.ended import EndedSessions
from tokenway.console.login_limit import FAILURES, WINDOW_S, LoginAttempts
from tokenway.console.session import CSRF_COOKIE, SESSION_COOKIE, SESSION_S, Sessions
from tokenway.errors import AuthenticationFailed, InvalidRequest, NotFound, PermissionDenied, RateLimited

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


def _assets() -> tuple[str, dict[str, bytes]]:
    """The files shipped in ``tokenway/console/static`` (read once, when the app is built), and their
    version: the pages name the assets under ``/ui/static/<version>/``, so a browser may keep them for
    good and a new version's pages fetch new ones."""
    folder = files("tokenway.console") / "static"
    assets = {item.name: item.read_bytes() for item in sorted(folder.iterdir(), key=lambda i: i.name)
              if item.is_file() and "." + item.name.rpartition(".")[2] in _TYPES}
    version = hashlib.sha256(b"".join(assets.values())).hexdigest()[:12]
    prefix = f"/ui/static/{version}/".encode()
    return version, {name: body.replace(b"/ui/static/", prefix) if name.endswith(".html") else body
                     for name, body in assets.items()}


def _errors(described: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI error answers: the API's envelope (``Error`` in the document)."""
    return {code: {"description": text, "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/Error"}}}} for code, text in described.items()}


def console_router(master_key: str | None, proxies: TrustedProxies | None, ended: EndedSessions,
                   attempts: LoginAttempts) -> APIRouter:
    """``proxies``: those whose ``X-Forwarded-Proto: https`` and forwarded-for are believed (they ended TLS
    for the gateway); ``ended``: where logging out ends a session; ``attempts``: wrong keys per address."""
    router = APIRouter(prefix="/ui")  # the pages are not in the API's document; logging in and out are
    sessions = Sessions(master_key) if master_key is not None else None
    version, assets = _assets()

    def page(name: str) -> Response:
        # The pages hold no data (the scripts fetch it), so a stale copy is harmless; the scripts'
        # names do not change between versions, hence no-cache (revalidate) rather than a long max-age.
        return Response(assets[name], media_type=_TYPES[".html"], headers={
            "cache-control": "no-cache", "x-frame-options": "DENY", "referrer-policy": "same-origin",
            "content-security-policy": "default-src 'self'; style-src 'self'; img-src 'self' data:; "
                                       "frame-ancestors 'none'; form-action 'self'"})

    def signed_in(request: Request) -> bool:
        if sessions is None:
            return True  # an open gateway has an open admin API, and so an open console
        try:
            sessions.check(request.cookies.get(SESSION_COOKIE, ""), "GET", None)
        except AuthenticationFailed:
            return False
        return True

    @router.get("", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse("/ui/", status_code=308)

    @router.get("/", include_in_schema=False)
    async def console(request: Request) -> Response:
        return page("index.html") if signed_in(request) else RedirectResponse("/ui/login", status_code=303)

    @router.get("/login", include_in_schema=False)
    async def login_page(request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=303) if signed_in(request) else page("login.html")

    @router.get("/static/{asset_version}/{name}", include_in_schema=False)
    async def asset(asset_version: str, name: str) -> Response:
        if name not in assets or name.endswith(".html"):
            raise NotFound(f"No console asset {name!r}.")
        # a page of another version (open while the gateway was upgraded) still gets an answer, not kept
        kept = "public, max-age=31536000, immutable" if asset_version == version else "no-cache"
        return Response(assets[name], media_type=_TYPES["." + name.rpartition(".")[2]],
                        headers={"cache-control": kept})

    @router.post("/session", tags=["console"], summary="Log in with the master key: sets the session cookies",
                 responses={200: {"content": {"application/json": {"schema": {
                     "type": "object", "required": ["open"], "properties": {"open": {"type": "boolean"}}}}}},
                            **_errors({400: "No key given.", 403: "Not the master key.",
                                       429: f"{FAILURES} wrong keys from this address within {WINDOW_S} s; "
                                            "see Retry-After."})})
    async def log_in(request: Request, key: Annotated[str | None, Body(embed=True)] = None) -> Response:
        if sessions is None or master_key is None:
            return Response(b'{"open": true}', media_type="application/json")
        if not key:
            raise InvalidRequest("Enter the master key to log in.", param="key")
        peer = request.client.host if request.client is not None else ""
        client = proxies.client(peer, request.scope["headers"]) if proxies is not None else peer
        wait = await attempts.admit(client)
        if wait > 0:
            raise RateLimited(f"{FAILURES} wrong keys from this address in {WINDOW_S} s; try again in "
                              f"{max(1, round(wait))} s.", retry_after=wait)
        if not hmac.compare_digest(key.encode(), master_key.encode()):
            raise PermissionDenied("That is not the master key.", param="key")
        await attempts.succeeded(client)
        session = sessions.issue()
        response = Response(b'{"open": false}', media_type="application/json")
        secure = request.url.scheme == "https" or (
            proxies is not None and request.client is not None and proxies.trusts(request.client.host)
            and request.headers.get("x-forwarded-proto") == "https")
        response.set_cookie(SESSION_COOKIE, session.token, max_age=SESSION_S, path="/", httponly=True,
                            samesite="strict", secure=secure)
        response.set_cookie(CSRF_COOKIE, session.csrf, max_age=SESSION_S, path="/", samesite="strict", secure=secure)
        return response

    @router.delete("/session", tags=["console"], status_code=204,
                   summary="Log out: clears the cookies and ends the session on every replica")
    async def log_out(request: Request) -> Response:
        genuine = sessions.verified(request.cookies.get(SESSION_COOKIE, "")) if sessions is not None else None
        if genuine is not None:  # a forged id is not stored: nobody can fill the list by logging out
            await ended.end(*genuine)
        response = Response(status_code=204)
        for name in (SESSION_COOKIE, CSRF_COOKIE):
            response.delete_cookie(name, path="/", samesite="strict")
        return response

    return router
