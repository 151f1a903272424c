"""Who is calling: the master key (and, once keys exist, virtual keys) or nobody."""

from __future__ import annotations

import hmac

from tokenway.context import RequestContext
from tokenway.errors import AuthenticationFailed
from tokenway.policies.base import Handler
from tokenway.providers.base import Answer, Call


class Authenticate:
    """With a master key configured, every data-plane call must present it (Bearer or api-key)."""

    def __init__(self, master_key: str | None) -> None:
        self._master = master_key.encode() if master_key else None

    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        if self._master is not None:
            presented = ctx.api_key
            if not presented:
                raise AuthenticationFailed(
                    "No API key provided. Send it as 'Authorization: Bearer <key>' or an 'api-key' header."
                )
            if not hmac.compare_digest(presented.encode(), self._master):
                raise AuthenticationFailed("Incorrect API key provided.")
            ctx.key_alias = "master"
        return await next(ctx, call)
