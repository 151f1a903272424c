"""Access control and money, wired once: the stores, the key cache, the ledger and their policies.

Embedded (no URLs set): counters in memory, keys and ledger in ``<data_dir>/tokenway.db``
(SQLite); budget counters start from the spend already in the ledger, so a restart does not
reset them. Shared: counters in Redis (``TOKENWAY_REDIS_URL``), keys and ledger in Postgres
(``TOKENWAY_DATABASE_URL``); any number of processes share limits, budgets and keys.
"""

from __future__ import annotations

import secrets
import time

from tokenway.config import GatewayConfig, Settings
from tokenway.observability.logging import JsonLog
from tokenway.policies.auth import Authenticate, KeyCache
from tokenway.policies.budget import Budgets, budget_lines
from tokenway.policies.ledger import RecordUsage
from tokenway.policies.limits import RateLimits, StoreGuard
from tokenway.stores.base import Counters, Database, KeyRecord, hash_key
from tokenway.usage.ledger import Ledger


def open_database(settings: Settings) -> Database:
    """The key table and ledger for these settings (not started)."""
    if settings.database_url:
        from tokenway.stores.postgres import PostgresDatabase

        return PostgresDatabase(settings.database_url)
    from tokenway.stores.sqlite import SqliteDatabase

    return SqliteDatabase(settings.data_dir / "tokenway.db")


def new_key() -> tuple[str, str]:
    """A fresh secret (``tw-`` + 32 random bytes, redacted by the log's key pattern) and its id."""
    return "tw-" + secrets.token_urlsafe(32), "key_" + secrets.token_hex(6)


def key_record(secret: str, key_id: str, **fields: object) -> KeyRecord:
    return KeyRecord.parse({"id": key_id, "hash": hash_key(secret), "hint": secret[-4:], **fields})


class Access:
    def __init__(self, settings: Settings, config: GatewayConfig, log: JsonLog) -> None:
        access = config.access
        self.config = access
        self.log = log
        self.db = open_database(settings)
        self.counters: Counters
        if settings.redis_url:
            from tokenway.stores.redis import RedisCounters

            self.counters = RedisCounters(settings.redis_url, prefix=access.redis_prefix)
        else:
            from tokenway.stores.memory import MemoryCounters

            self.counters = MemoryCounters()
        self.shared_counters = bool(settings.redis_url)
        self.keys = KeyCache(self.db, log, access.keys_refresh_s)
        self.ledger = Ledger(self.db, settings.data_dir / "wal", log, flush_s=access.ledger_flush_s)
        self.guard = StoreGuard(access.on_store_down == "open", log)
        self.authenticate = Authenticate(settings.master_key, self.keys)
        self.record = RecordUsage(self.ledger)
        self.budgets = Budgets(self.counters, access, self.guard, config.models)
        self.rate_limits = RateLimits(self.counters, access, self.guard, self.budgets)

    def store_failures(self) -> int:
        """Counter store calls that failed: on requests (the guard's count) and in settles sent after them."""
        return self.guard.failures + self.counters.settle_failures

    async def start(self) -> None:
        await self.db.start()
        await self.ledger.start()  # replays write-ahead files of dead processes before anything is read
        await self.keys.start()
        await self._seed_budgets()

    async def _seed_budgets(self) -> None:
        """Start budget counters from the ledger: memory counters begin empty at every start."""
        if self.shared_counters:
            return  # Redis keeps its counters across restarts; the ledger lags reservations in flight
        now = time.time()
        for record in self.keys.records():
            for line in budget_lines(record, self.config):
                since = line.budget.period_start(now)
                if line.scope == "key":
                    spent = await self.db.spent(since, key_id=record.id)
                else:
                    spent = await self.db.spent(since, team=record.team)
                await self.counters.seed(line, spent)

    async def aclose(self) -> None:
        await self.keys.aclose()
        await self.ledger.aclose()
        await self.counters.aclose()
        await self.db.aclose()
