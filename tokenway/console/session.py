"""The console's browser session: a signed cookie in place of the master key, and its CSRF token.

Stateless, so every replica behind a load balancer accepts a session any of them issued: the cookie
is ``<expires>.<nonce>.<signature>``, signed with a key derived from the master key (changing the
master key ends every session). The nonce is the session's id: logging out ends it on every replica
through a short list of ended ids (``console/ended.py``), not a lookup of every session. The cookie
is HttpOnly and SameSite=Strict; a state-changing call must also carry ``X-Tokenway-CSRF``, a second
signature over the same cookie that the page reads from a readable cookie and sends as a header,
which another site can neither read nor set.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from tokenway.errors import AuthenticationFailed, PermissionDenied

SESSION_COOKIE = "tokenway_session"
CSRF_COOKIE = "tokenway_csrf"
CSRF_HEADER = "x-tokenway-csrf"
SESSION_S = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Session:
    token: str  # the HttpOnly cookie's value
    csrf: str  # what the page sends back as X-Tokenway-CSRF
    expires: int  # unix seconds


class Sessions:
    """Issues and checks console sessions for one master key."""

    def __init__(self, master_key: str) -> None:
        self._key = hmac.new(master_key.encode(), b"tokenway console session v1", hashlib.sha256).digest()

    def issue(self, now: float | None = None) -> Session:
        expires = int((now if now is not None else time.time()) + SESSION_S)
        body = f"{expires}.{secrets.token_urlsafe(16)}"
        token = f"{body}.{self._sign('session', body)}"
        return Session(token, self._sign("csrf", token), expires)

    def check(self, token: str, method: str, csrf: str | None, now: float | None = None) -> None:
        """Raise 401 for a forged or expired session, 403 for a state-changing call without its CSRF token."""
        body, _, signature = token.rpartition(".")
        expires, _, _ = body.partition(".")
        if not (body and hmac.compare_digest(signature, self._sign("session", body)) and expires.isdigit()):
            raise AuthenticationFailed("The console session is not valid; log in again at /ui/login.")
        if int(expires) <= (now if now is not None else time.time()):
            raise AuthenticationFailed("The console session has expired; log in again at /ui/login.")
        if method not in SAFE_METHODS and not (csrf and hmac.compare_digest(csrf, self._sign("csrf", token))):
            raise PermissionDenied(
                f"A console session changing state must send its {CSRF_HEADER} header (the {CSRF_COOKIE} cookie).")

    def verified(self, token: str, now: float | None = None) -> tuple[str, int] | None:
        """The id and expiry of a genuine session not yet expired, else None."""
        try:
            self.check(token, "GET", None, now)
        except AuthenticationFailed:
            return None
        expires, session_id, _ = token.split(".", 2)
        return session_id, int(expires)

    def _sign(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def session_id(token: str) -> str:
    """The id a session cookie claims (unchecked: only for asking whether that session was ended)."""
    return token.split(".", 2)[1] if token.count(".") == 2 else ""
