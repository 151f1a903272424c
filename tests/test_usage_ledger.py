"""The usage ledger: batched, replayed after a crash, summarised; costs and the price table."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from tests.access_support import MASTER, SERVED_COST, chat, config, create_key, gateway
from tests.fakes import FakeUpstream
from tokenway.config import DeploymentConfig, Price
from tokenway.observability.logging import JsonLog
from tokenway.prices import list_price
from tokenway.stores.base import UsageRecord
from tokenway.stores.sqlite import SqliteDatabase
from tokenway.usage.cost import Rates, deployment_price
from tokenway.usage.ledger import Ledger

ADMIN = {"Authorization": f"Bearer {MASTER}"}


def _record(i: int, cost: int = 1000) -> UsageRecord:
    return UsageRecord(f"id{i}", f"req{i}", time.time(), "key_a", "web", "m", "m#0", 7, 6, 0, cost, 1.0, 200)


def test_records_survive_a_crash_and_are_replayed_once(tmp_path: Path) -> None:
    # A process records three requests and dies before any flush (os._exit: no shutdown runs). The
    # lines reach the file at the end of the event loop's turn, so it dies one turn later.
    script = textwrap.dedent(f"""
        import asyncio, os
        from pathlib import Path
        from tokenway.observability.logging import JsonLog
        from tokenway.stores.sqlite import SqliteDatabase
        from tests.test_usage_ledger import _record
        from tokenway.usage.ledger import Ledger

        async def main():
            db = SqliteDatabase(Path({str(tmp_path / "db.sqlite")!r}))
            await db.start()
            ledger = Ledger(db, Path({str(tmp_path / "wal")!r}), JsonLog(), flush_s=3600)
            await ledger.start()
            for i in range(3):
                ledger.record(_record(i))
            await asyncio.sleep(0)
            os._exit(9)

        asyncio.run(main())
    """)
    # The checkout goes on the path for ``tests`` after any PYTHONPATH already set (the compiled-wheel
    # run puts the wheel there, and runs with the working directory off the path).
    checkout = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), checkout) if p)
    crashed = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": path}, check=False)
    assert crashed.returncode == 9
    assert len(list((tmp_path / "wal").glob("usage-*.wal"))) == 1

    async def restart() -> list[dict[str, object]]:
        db = SqliteDatabase(tmp_path / "db.sqlite")
        await db.start()
        ledger = Ledger(db, tmp_path / "wal", JsonLog(), flush_s=3600)
        await ledger.start()
        await ledger.aclose()
        second = Ledger(db, tmp_path / "wal", JsonLog())  # nothing left to replay: counted once
        await second.start()
        await second.aclose()
        rows = await db.usage_summary("key", 0, time.time() + 1)
        await db.aclose()
        return rows

    rows = asyncio.run(restart())
    assert rows[0]["requests"] == 3 and rows[0]["cost_nanos"] == 3000
    assert list((tmp_path / "wal").glob("usage-*.wal")) == []


async def test_a_failed_database_write_keeps_the_records(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "db.sqlite")
    await db.start()
    ledger = Ledger(db, tmp_path / "wal", JsonLog(), flush_s=3600)
    await ledger.start()
    real_insert = db.insert_usage

    async def broken(records: list[UsageRecord]) -> None:
        raise OSError("disk full")

    db.insert_usage = broken  # type: ignore[method-assign]
    ledger.record(_record(1))
    await ledger.flush()
    assert await db.usage_summary("key", 0, time.time() + 1) == []
    db.insert_usage = real_insert  # type: ignore[method-assign]
    ledger.record(_record(2))
    await ledger.flush()
    rows = await db.usage_summary("key", 0, time.time() + 1)
    assert rows[0]["requests"] == 2
    await ledger.aclose()
    await db.aclose()


def test_usage_endpoints_group_by_key_team_model_day(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        web = create_key(base, team="web", name="web-1")
        ops = create_key(base, team="ops")
        for _ in range(3):
            assert chat(base, web["key"]).status_code == 200
        assert chat(base, ops["key"]).status_code == 200
        assert chat(base, ops["key"], model="other").status_code == 200
        by_team = httpx.get(base + "/admin/usage?group_by=team", headers=ADMIN).json()["data"]
        by_model = httpx.get(base + "/admin/usage?group_by=model", headers=ADMIN).json()["data"]
        by_day = httpx.get(base + "/admin/usage?group_by=day", headers=ADMIN).json()["data"]
        own = httpx.get(base + "/v1/usage", headers={"Authorization": f"Bearer {web['key']}"}).json()
        not_a_key = httpx.get(base + "/v1/usage", headers={"Authorization": "Bearer nope"})
    assert {r["team"]: (r["requests"], r["cost_nanos"]) for r in by_team} == {
        "web": (3, 3 * SERVED_COST), "ops": (2, SERVED_COST),  # "other" has no price configured
    }
    assert {r["model"]: r["prompt_tokens"] for r in by_model} == {"m": 28, "other": 7}
    assert by_day[0]["day"] == time.strftime("%Y-%m-%d", time.gmtime()) and by_day[0]["requests"] == 5
    assert own["key_id"] == web["id"] and own["by_model"][0]["completion_tokens"] == 18
    assert not_a_key.status_code == 401


def test_cost_is_exact_integer_nanodollars() -> None:
    assert Rates.of(Price(input_per_1m=1.0, output_per_1m=2.0)).nanos(7, 6) == SERVED_COST
    assert Rates.of(Price(input_per_1m=0.075, output_per_1m=0.3)).nanos(1, 0) == 75
    assert Rates.of(Price(input_per_1m=0.0375, output_per_1m=0)).nanos(1, 0) == 38  # rounded up
    assert Rates.of(Price(input_per_1m=0.15, output_per_1m=0.6)).nanos(1_000_000, 1_000_000) == 750_000_000


@pytest.mark.parametrize(("model", "price"), [
    ("gpt-4o-mini", (0.15, 0.60)), ("gpt-4o-2024-08-06", (2.50, 10.00)), ("openai/gpt-4.1", (2.0, 8.0)),
    ("my-finetune", None),
])
def test_shipped_price_table_and_config_override(model: str, price: tuple[float, float] | None) -> None:
    assert list_price(model) == price
    listed = deployment_price(DeploymentConfig(provider="openai", model=model))
    assert (listed.input_per_1m, listed.output_per_1m) == (price or (0.0, 0.0))
    configured = DeploymentConfig(provider="openai", model=model, price={"input_per_1m": 9, "output_per_1m": 9})
    assert deployment_price(configured).input_per_1m == 9
