"""The access policies alone, in-process: what a virtual key adds per request over the master key.

    python benchmarks/budgets/access_path.py [--rounds 7] [--redis redis://127.0.0.1:6379/0]

The gateway's own ``Authenticate``, ``RateLimits`` and ``Budgets`` run in their real order
(budget after routing has set the target) around an instant backend, with their finalizers
(token and budget settles), 64 requests at a time on uvloop like the server. The key is the one
``run.sh`` uses: rpm, tpm and a $/day budget. What is timed is the process's CPU per request
(``time.process_time``), alternating master key and virtual key each round, so the box's drift
hits both. End-to-end req/s on a shared 2-core box moves by more than this whole path costs;
this isolates it. With ``--redis``, the counters are in Redis (its own CPU is not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson
import uvloop

# The same config, request body and virtual key as policy_cost.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway_overhead"))
from policy_cost import BASE, BODY, create_virtual_key

from tokenway.app import Gateway
from tokenway.config import Settings, parse_config
from tokenway.context import RequestContext
from tokenway.protocol import Usage
from tokenway.providers.base import Call

CONCURRENCY = 64


async def measure(rounds: int, requests: int, redis_url: str | None) -> None:
    extra = {"redis_url": redis_url} if redis_url else {}
    with tempfile.TemporaryDirectory() as data_dir:
        app = Gateway(Settings(data_dir=Path(data_dir), master_key="sk-m", **extra),
                      parse_config(BASE + "logging: {requests: false}\n"))
        await app.startup()
        access, target = app.access, app._models.all()[0]
        virtual = await create_virtual_key(app)
        body = orjson.loads(BODY)

        async def backend(ctx: RequestContext, call: Call) -> None:
            ctx.usage = Usage(12, 20)
            await asyncio.sleep(0)  # a real backend answers on a later loop turn

        async def routed(ctx: RequestContext, call: Call) -> None:
            ctx.target = target  # what routing does before the budget policy runs
            await access.budgets(ctx, call, backend)

        async def limited(ctx: RequestContext, call: Call) -> None:
            await access.rate_limits(ctx, call, routed)

        async def one(key: str) -> None:
            ctx = RequestContext("req", "chat", api_key=key, client_ip="127.0.0.1")
            await access.authenticate(ctx, Call("chat", dict(body)), limited)
            for finalizer in reversed(ctx.finalizers):  # the server's order
                finalizer(ctx)

        async def cpu_per_request(key: str) -> float:
            started = time.process_time()
            for _ in range(requests // CONCURRENCY):
                await asyncio.gather(*(one(key) for _ in range(CONCURRENCY)))
            return (time.process_time() - started) / requests * 1e6

        results: dict[str, list[float]] = {"master": [], "virtual": []}
        for key in ("sk-m", virtual):  # warm-up
            await cpu_per_request(key)
        for _ in range(rounds):
            results["master"].append(await cpu_per_request("sk-m"))
            results["virtual"].append(await cpu_per_request(virtual))
        await app.shutdown()
    store = "Redis" if redis_url else "embedded"
    for name, values in results.items():
        print(f"{store:8s} {name:7s} CPU µs/request: median {statistics.median(values):6.2f}  min {min(values):6.2f}")
    added = [v - m for m, v in zip(results["master"], results["virtual"], strict=True)]
    print(f"{store:8s} a virtual key adds: median {statistics.median(added):.2f} µs, "
          f"min over rounds {min(results['virtual']) - min(results['master']):.2f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=6400, help="per round and key")
    parser.add_argument("--redis", help="a Redis URL: counters there instead of in memory")
    args = parser.parse_args()
    uvloop.run(measure(args.rounds, args.requests, args.redis))


if __name__ == "__main__":
    main()
