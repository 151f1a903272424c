"""The one check in front of every admin endpoint: the master key, as Bearer or api-key header, or the
console's session cookie (``tokenway/console/session.py``), CSRF-checked on calls that change state.
A session ended by logging out never gets here: its cookies are dropped in front of the control plane
(``tokenway/console/ended.py``)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Header, Request

from tokenway.console.session import CSRF_HEADER, SESSION_COOKIE, Sessions
from tokenway.errors import AuthenticationFailed, PermissionDenied


def presented_key(authorization: str | None, api_key: str | None) -> str | None:
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return api_key.strip() if api_key else None


def require_master_key(master_key: str | None) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency; with no master key configured the admin API is as open as the gateway."""
    sessions = Sessions(master_key) if master_key is not None else None

    async def require_master(
        request: Request,
        authorization: Annotated[str | None, Header()] = None, api_key: Annotated[str | None, Header()] = None
    ) -> None:
        if master_key is None or sessions is None:
            return  # an open gateway (loopback only, unless --allow-open) has an open admin API too
        presented = presented_key(authorization, api_key)
        session = request.cookies.get(SESSION_COOKIE)
        if not presented and session:
            sessions.check(session, request.method, request.headers.get(CSRF_HEADER))
            return
        if not presented:
            raise AuthenticationFailed("The admin API needs the master key (Authorization: Bearer <master key>).")
        if not hmac.compare_digest(presented.encode(), master_key.encode()):
            raise PermissionDenied("This key may not use the admin API; it needs the master key.")

    return require_master


def require_metrics_token(metrics_token: str, master_key: str | None) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency for ``/metrics``: the metrics token (what Prometheus sends as its bearer token),
    or the master key. The metrics name key aliases, teams and models: not for every caller to read."""
    accepted = [secret.encode() for secret in (metrics_token, master_key) if secret]

    async def require_token(
        authorization: Annotated[str | None, Header()] = None, api_key: Annotated[str | None, Header()] = None
    ) -> None:
        presented = presented_key(authorization, api_key)
        if not presented:
            raise AuthenticationFailed(
                "/metrics needs the metrics token (Authorization: Bearer <TOKENWAY_METRICS_TOKEN>).")
        if not any(hmac.compare_digest(presented.encode(), secret) for secret in accepted):
            raise PermissionDenied(
                "This token may not read /metrics; send TOKENWAY_METRICS_TOKEN or the master key.")

    return require_token
