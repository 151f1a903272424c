"""Virtual keys: made here, stored hashed in the key table, served from an in-process cache.

Keys are looked up by the SHA-256 of the presented secret in ``KeyCache``: no database round trip
on any request. The cache polls the table's change counter (an index-only read, every
``access.keys_refresh_s``) and loads only changed rows, so a key created, changed or revoked by
any process or the CLI takes effect everywhere within about half a second.
"""

from __future__ import annotations

import secrets

from tokenway.observability.logging import JsonLog
from tokenway.stores.base import Database, KeyRecord, hash_key
from tokenway.stores.polling import Poller


def new_key() -> tuple[str, str]:
    """A fresh secret (``tw-`` + 32 random bytes, redacted by the log's key pattern) and its id."""
    return "tw-" + secrets.token_urlsafe(32), "key_" + secrets.token_hex(6)


def key_record(secret: str, key_id: str, **fields: object) -> KeyRecord:
    return KeyRecord.model_validate({"id": key_id, "hash": hash_key(secret), "hint": secret[-4:], **fields})


class KeyCache:
    """Every key record (revoked ones too, so the error can say so), by hash."""

    def __init__(self, db: Database, log: JsonLog, refresh_s: float = 0.5) -> None:
        self._db = db
        self._poller = Poller(self.refresh, refresh_s, log, "keys",
                              "serving from the cached key table; changes are not seen until it recovers")
        self._by_hash: dict[str, KeyRecord] = {}
        self._by_id: dict[str, KeyRecord] = {}  # for jobs, which run as the key that submitted them
        self._seq = 0

    async def start(self) -> None:
        await self.refresh()
        self._poller.start()

    async def aclose(self) -> None:
        await self._poller.aclose()

    def lookup(self, secret: str) -> KeyRecord | None:
        return self._by_hash.get(hash_key(secret))

    def by_id(self, key_id: str) -> KeyRecord | None:
        return self._by_id.get(key_id)

    def records(self) -> list[KeyRecord]:
        return list(self._by_hash.values())

    async def refresh(self) -> None:
        """Load whatever changed since the last refresh (the admin API calls this after a write)."""
        changed, self._seq = await self._db.keys_changed_since(self._seq)
        for record in changed:
            self._by_hash[record.hash] = record
            self._by_id[record.id] = record
