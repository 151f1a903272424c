"""Who is calling: the master key, a virtual key from the key table, or (open mode) nobody.

Virtual keys are looked up in an in-process cache by the SHA-256 of the presented secret: no
database round trip on any request. ``KeyCache`` polls the database's change counter (an
index-only read, every ``access.keys_refresh_s``) and loads only changed rows, so a key
created, changed or revoked by any process or the CLI takes effect everywhere within about
half a second.

The secrets of keys that were found are remembered in process (``MAX_MEMO`` of them, forgotten
whenever the key table changes), so a key in use is hashed once, not on every request (hashing
costs more than the rest of the key's checks). They are in this process's memory only, as every
request's secret is while it is read; never stored or logged. A secret that matches no key is
never remembered, so guessing fills nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time

from tokenway.context import RequestContext
from tokenway.errors import AuthenticationFailed, PermissionDenied
from tokenway.observability.logging import JsonLog
from tokenway.policies.base import Handler
from tokenway.providers.base import Answer, Call
from tokenway.stores.base import Database, KeyRecord, hash_key

MAX_MEMO = 4096  # secrets of keys in use remembered (hashed once); past that the memo starts over


class KeyCache:
    """Every key record (revoked ones too, so the error can say so), by hash."""

    def __init__(self, db: Database, log: JsonLog, refresh_s: float = 0.5) -> None:
        self._db = db
        self._log = log
        self._refresh_s = refresh_s
        self._by_hash: dict[str, KeyRecord] = {}
        self._by_secret: dict[str, KeyRecord] = {}  # found keys' secrets: the memo described above
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def lookup(self, secret: str) -> KeyRecord | None:
        record = self._by_secret.get(secret)
        if record is not None:
            return record
        record = self._by_hash.get(hash_key(secret))
        if record is not None:  # only a found key's secret is remembered
            if len(self._by_secret) >= MAX_MEMO:
                self._by_secret.clear()
            self._by_secret[secret] = record
        return record

    def records(self) -> list[KeyRecord]:
        return list(self._by_hash.values())

    async def refresh(self) -> None:
        """Load whatever changed since the last refresh (the admin API calls this after a write)."""
        changed, self._seq = await self._db.keys_changed_since(self._seq)
        for record in changed:
            self._by_hash[record.hash] = record
        if changed:  # a remembered secret must not outlive a change to its key (revoked, new limits)
            self._by_secret.clear()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except Exception as exc:  # keep serving from the cache; say so once, and when it recovers
                if not self._failing:
                    self._log.event("keys_refresh_failed", level="error", error=repr(exc),
                                    note="serving from the cached key table; changes are not seen until it recovers")
                self._failing = True
                continue
            if self._failing:
                self._log.event("keys_refresh_recovered")
                self._failing = False


class Authenticate:
    """With a master key configured, every call presents it or a valid virtual key (Bearer or api-key).

    Without one the gateway is open: unknown keys are anonymous callers (limited per IP), but a
    known virtual key still gets its own limits and budget, and a revoked one is refused.
    """

    def __init__(self, master_key: str | None, keys: KeyCache | None = None) -> None:
        self._master = master_key.encode() if master_key else None
        self._keys = keys

    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        presented = ctx.api_key
        if presented and self._master is not None and hmac.compare_digest(presented.encode(), self._master):
            ctx.key_alias = "master"
            return await next(ctx, call)
        record = self._keys.lookup(presented) if presented and self._keys is not None else None
        if record is None:
            if self._master is None:
                return await next(ctx, call)
            if not presented:
                raise AuthenticationFailed(
                    "No API key provided. Send it as 'Authorization: Bearer <key>' or an 'api-key' header."
                )
            raise AuthenticationFailed("Incorrect API key provided.")
        if record.revoked:
            raise AuthenticationFailed(f"The API key {record.id} has been revoked; ask your admin for a new one.")
        if record.expires_at is not None and record.expired(time.time()):
            raise AuthenticationFailed(f"The API key {record.id} has expired; ask your admin to extend or replace it.")
        model = call.body.get("model")
        if record.models and model not in record.models:
            raise PermissionDenied(
                f"The API key {record.id} may not use the model '{model}'. Allowed: {', '.join(record.models)}.",
                param="model", code="model_not_allowed",
            )
        ctx.key_alias = record.name or record.id
        ctx.key = record
        return await next(ctx, call)
