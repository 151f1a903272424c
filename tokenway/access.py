"""Access control and money, wired once: the key table, the counters, the ledger and the policy.

Embedded (no URLs set): counters in process, keys and ledger in ``<data_dir>/tokenway.db``
(SQLite); budget counters start from the spend already in the ledger, so a restart does not
reset them. Shared: counters in Redis (``TOKENWAY_REDIS_URL``), keys and ledger in Postgres
(``TOKENWAY_DATABASE_URL``); any number of processes share limits, budgets and keys.
"""

from __future__ import annotations

import time

from tokenway.config import GatewayConfig, Settings
from tokenway.keys import KeyCache
from tokenway.observability.logging import JsonLog
from tokenway.policies.access import AccessPolicy, budget_lines
from tokenway.stores.base import Database
from tokenway.stores.counters import Counters
from tokenway.usage.ledger import Ledger


def open_database(settings: Settings) -> Database:
    """The key table and ledger for these settings (not started)."""
    if settings.database_url:
        from tokenway.stores.postgres import PostgresDatabase

        return PostgresDatabase(settings.database_url)
    from tokenway.stores.sqlite import SqliteDatabase

    return SqliteDatabase(settings.data_dir / "tokenway.db")


def open_counters(settings: Settings, config: GatewayConfig) -> Counters:
    if settings.redis_url:
        from tokenway.stores.redis import RedisCounters

        return RedisCounters(settings.redis_url, prefix=config.access.redis_prefix)
    from tokenway.stores.memory import MemoryCounters

    return MemoryCounters()


class Access:
    def __init__(self, settings: Settings, config: GatewayConfig, log: JsonLog) -> None:
        self.config = config.access
        self.db = open_database(settings)
        self.counters = open_counters(settings, config)
        self._shared_counters = bool(settings.redis_url)
        self.keys = KeyCache(self.db, log, self.config.keys_refresh_s)
        self.ledger = Ledger(self.db, settings.data_dir / "wal", log, flush_s=self.config.ledger_flush_s)
        self.policy = AccessPolicy(settings.master_key, self.keys, self.counters, self.ledger, self.config,
                                   config.models, log, max_streams=config.limits.max_streams_per_key,
                                   tiers={router.name: router.models() for router in config.tiers})

    def store_failures(self) -> int:
        """Counter store calls that failed (admissions, and settles sent after their requests)."""
        return self.counters.failures

    async def start(self) -> None:
        await self.db.start()
        await self.ledger.start()  # replays write-ahead files of dead processes before anything is read
        await self.keys.start()
        if not self._shared_counters:  # Redis keeps its counters; in-process ones start from the ledger
            now = time.time()
            for record in self.keys.records():
                for line in budget_lines(record, self.config, now):
                    since = line.budget.period_start(now)
                    key_id, team = (record.id, None) if line.scope == "key" else (None, record.team)
                    await self.counters.seed(line, await self.db.spent(since, key_id=key_id, team=team))

    async def aclose(self) -> None:
        await self.keys.aclose()
        await self.ledger.aclose()
        await self.counters.aclose()
        await self.db.aclose()
