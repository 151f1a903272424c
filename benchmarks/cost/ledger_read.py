"""How long `tokenway cost --from-ledger` takes to read a week of traffic from the SQLite ledger.

    python benchmarks/cost/ledger_read.py [--per-day 100000] [--days 7] [--dir /tmp/cost-ledger]

Writes per-day x days rows (random prompt and completion sizes, spread evenly over the window)
through the database's own insert, then times ``traffic.from_ledger`` on them, three times.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tokenway.cost.traffic import DAY_S, from_ledger
from tokenway.stores.base import UsageRecord
from tokenway.stores.sqlite import SqliteDatabase

BATCH = 50_000


async def main(per_day: int, days: int, db: SqliteDatabase) -> None:
    await db.start()
    rng, now, rows = random.Random(1), time.time(), per_day * days
    gap = days * DAY_S / rows
    for start in range(0, rows, BATCH):
        await db.insert_usage([
            UsageRecord(f"r{i}", f"q{i}", now - days * DAY_S + i * gap, "k", None, "m", "m#0",
                        rng.randrange(50, 3000), rng.randrange(10, 800), 0, 1, 5.0, 200)
            for i in range(start, min(start + BATCH, rows))
        ])
        print(f"\rwritten {min(start + BATCH, rows):,} / {rows:,} rows", end="", flush=True)
    print()
    times = []
    for _ in range(3):
        started = time.perf_counter()
        traffic = await from_ledger(db, days, now + 1)
        times.append(time.perf_counter() - started)
    await db.aclose()
    print(f"{rows:,} rows: read in {statistics.median(times):.2f} s (median of 3: "
          f"{', '.join(f'{t:.2f}' for t in times)}); {traffic.source}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-day", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/cost-ledger"))
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    asyncio.run(main(args.per_day, args.days, SqliteDatabase(args.dir / "tokenway.db")))
