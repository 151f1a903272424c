"""The access policies alone, in-process: what a virtual key adds per request over the master key.

    python benchmarks/budgets/access_path.py [--rounds 7] [--redis redis://127.0.0.1:6379/0] [--concurrency 64]

The gateway's own ``Authenticate``, ``RateLimits`` and ``Budgets`` run in their real order
(budget after routing has set the target) around an instant backend, with their finalizers
(token and budget settles), 64 requests at a time on uvloop like the server. The key is the one
``run.sh`` uses: rpm, tpm and a $/day budget. What is timed is the process's CPU per request
(``time.process_time``), alternating master key and virtual key each round, so the box's drift
hits both. End-to-end req/s on a shared 2-core box moves by more than this whole path costs;
this isolates it. With ``--redis``, the counters are in Redis (its own CPU is not counted).
With ``--bytecodes``, the bytecodes each function runs per request are counted under a tracer
instead, and what a virtual key adds is listed by function: the map of where the path's cost lies.
With ``--concurrency 1`` the wall time per request is also worth reading: it is the latency the
access path adds, store round trips included.

Counted in instructions instead (exact, and the same on a busy box): run one key's requests alone
under callgrind at two request counts; the difference divided by the difference in requests is
that key's cost per request, start-up and shutdown cancelling out:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python benchmarks/budgets/access_path.py \
        --rounds 0 --key virtual --requests 3200     # then --requests 6400; and --key master

Against the deployment wheel (``make wheel``, the access path compiled), unpack it and put it first:
``python -m zipfile -e dist/tokenway-*.whl /tmp/site`` and ``PYTHONPATH=/tmp/site`` before the command.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

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
from tokenway.usage.cost import prompt_size, tokens_for_chars


async def measure(
    rounds: int, requests: int, redis_url: str | None, concurrency: int, only: str, bytecodes: bool = False
) -> None:
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
            call = Call("chat", dict(body))
            call.prompt_estimate = tokens_for_chars(*prompt_size(call))  # the data plane's size check does this
            await access.authenticate(ctx, call, limited)
            for finalizer in reversed(ctx.finalizers):  # the server's order
                finalizer(ctx)

        async def per_request(key: str) -> tuple[float, float]:
            """(CPU, wall) microseconds per request."""
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(requests // concurrency):
                await asyncio.gather(*(one(key) for _ in range(concurrency)))
            done = requests // concurrency * concurrency
            return (time.process_time() - cpu) / done * 1e6, (time.perf_counter() - wall) / done * 1e6

        async def count_bytecodes(key: str) -> Counter[tuple[str, str]]:
            """Bytecodes run per function over ``requests`` requests (a tracer on every frame)."""
            counts: Counter[tuple[str, str]] = Counter()

            def trace(frame: FrameType, event: str, arg: object) -> Any:
                frame.f_trace_opcodes, frame.f_trace_lines = True, False
                if event == "opcode":
                    counts[(frame.f_code.co_filename, frame.f_code.co_name)] += 1
                return trace

            sys.settrace(trace)
            try:
                await per_request(key)
            finally:
                sys.settrace(None)
            return counts

        results: dict[str, list[tuple[float, float]]] = {"master": [], "virtual": []}
        for key in {"both": ("sk-m", virtual), "master": ("sk-m",), "virtual": (virtual,)}[only]:  # warm-up
            await per_request(key)
        if not rounds:  # --rounds 0: the warm-up alone, for counting instructions under callgrind
            await app.shutdown()
            return
        if bytecodes:
            counts = {key: await count_bytecodes(key) for key in ("sk-m", virtual)}
            await app.shutdown()
            print_bytecodes(counts["sk-m"], counts[virtual], requests)
            return
        for _ in range(rounds):
            results["master"].append(await per_request("sk-m"))
            results["virtual"].append(await per_request(virtual))
        await app.shutdown()
    store = "Redis" if redis_url else "embedded"
    for which, label in ((0, "CPU"), (1, "wall")):
        master, virtual_key = ([r[which] for r in results[k]] for k in ("master", "virtual"))
        for name, values in (("master", master), ("virtual", virtual_key)):
            print(f"{store:8s} {name:7s} {label:4s} µs/request: median {statistics.median(values):7.2f}  "
                  f"min {min(values):7.2f}")
        added = [v - m for m, v in zip(master, virtual_key, strict=True)]
        print(f"{store:8s} a virtual key adds ({label}): median {statistics.median(added):.2f} µs, "
              f"min over rounds {min(virtual_key) - min(master):.2f} µs")


def print_bytecodes(master: Counter[tuple[str, str]], virtual: Counter[tuple[str, str]], requests: int) -> None:
    root = str(Path(__file__).resolve().parents[2]) + "/"
    print(f"bytecodes per request: master key {sum(master.values()) / requests:.0f}, "
          f"virtual key {sum(virtual.values()) / requests:.0f}; what the virtual key adds, by function:")
    added = {where: (virtual[where] - master[where]) / requests for where in master | virtual}
    for (path, name), count in sorted(added.items(), key=lambda item: -abs(item[1]))[:30]:
        if abs(count) >= 1:
            print(f"{count:8.1f}  {path.removeprefix(root)}:{name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=6400, help="per round and key")
    parser.add_argument("--redis", help="a Redis URL: counters there instead of in memory")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (the server's c=64 by default)")
    parser.add_argument("--key", choices=("both", "master", "virtual"), default="both",
                        help="which key the warm-up runs (with --rounds 0, the only requests made)")
    parser.add_argument("--bytecodes", action="store_true",
                        help="count the bytecodes each function runs per request instead of timing (the warm-up, "
                             "then --requests requests per key under a tracer; plain asyncio, not uvloop)")
    args = parser.parse_args()
    run = asyncio.run if args.bytecodes else uvloop.run
    run(measure(args.rounds, args.requests, args.redis, args.concurrency, args.key, args.bytecodes))


if __name__ == "__main__":
    main()
