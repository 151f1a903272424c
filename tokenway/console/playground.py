"""The playground's door into the data plane: ``POST /ui/playground/chat/completions``.

A browser holding a console session has no key to send (the session cookie stands in for the
master key and is HttpOnly), so this endpoint checks the session and its CSRF header, then calls
the ordinary chat endpoint as the master key would: same policies, limits, cache, routing and
ledger (as the ``master`` key) as any other call.
"""

from __future__ import annotations

from starlette.requests import cookie_parser

from tokenway.api.openai import Endpoint
from tokenway.asgi import Receive, Scope, Send, send_error
from tokenway.console.session import CSRF_HEADER, SESSION_COOKIE, Sessions
from tokenway.errors import GatewayError

_CREDENTIALS = (b"authorization", b"api-key", b"x-api-key", b"cookie")
_CSRF = CSRF_HEADER.encode()


def playground_chat(chat: Endpoint, master_key: str | None) -> Endpoint:
    """``chat`` (the ``/v1/chat/completions`` endpoint) for a console session instead of a key."""
    sessions = Sessions(master_key) if master_key is not None else None
    authorization = [(b"authorization", f"Bearer {master_key}".encode())] if master_key is not None else []

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope["headers"]
        if sessions is not None:
            cookies = cookie_parser(b"; ".join(v for n, v in headers if n == b"cookie").decode("latin-1"))
            csrf = next((v.decode("latin-1") for n, v in headers if n == _CSRF), None)
            try:
                sessions.check(cookies.get(SESSION_COOKIE, ""), "POST", csrf)
            except GatewayError as error:
                await send_error(send, error, [])
                return
        kept = [(name, value) for name, value in headers if name not in _CREDENTIALS]
        await chat({**scope, "headers": kept + authorization}, receive, send)

    return serve
