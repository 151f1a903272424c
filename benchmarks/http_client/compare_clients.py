"""Upstream HTTP client choice: the gateway's own client vs aiohttp vs httpx against the fixed-reply
upstream, same loop, same load.

    python benchmarks/http_client/compare_clients.py [--conns 64] [--requests 20000]

Needs the nginx mock of ../shared/bench on 127.0.0.1:9101 (compare.sh starts it; or
`nginx -c $PWD/mock-upstream.nginx.conf`). Prints req/s, latency percentiles and this process's
CPU per request (the client's own cost: nginx runs in its own process) per client.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
import httpx
import orjson
import uvloop

from tokenway.providers.upstream import Endpoint, HttpClient, render_headers

URL = "http://127.0.0.1:9101/json/v1/chat/completions"
BODY = orjson.dumps({"model": "mock", "messages": [{"role": "user", "content": "Write one sentence about gateways."}]})
HEADERS = {"content-type": "application/json"}


async def run(name: str, call, conns: int, total: int) -> None:  # type: ignore[no-untyped-def]
    latencies: list[float] = []

    async def worker(n: int) -> None:
        for _ in range(n):
            t = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t)

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(total // conns) for _ in range(conns)))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    q = statistics.quantiles(latencies, n=100)
    print(f"{name:8s} c={conns:<3d} rps={len(latencies) / wall:8.0f} p50={q[49] * 1e3:6.2f}ms p99={q[98] * 1e3:6.2f}ms "
          f"cpu/request={cpu / len(latencies) * 1e6:5.1f}us")


async def main(conns: int, total: int) -> None:
    client = HttpClient()
    endpoint, headers = Endpoint(URL), render_headers(HEADERS)

    async def own_call() -> None:
        resp = await client.post(endpoint, headers, BODY, connect_s=5.0, answer_s=30.0, whole=True)
        orjson.loads(await resp.read())

    await run("tokenway", own_call, conns, total // 10)  # warm-up
    await run("tokenway", own_call, conns, total)
    await client.aclose()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def aiohttp_call() -> None:
            async with session.post(URL, data=BODY, headers=HEADERS) as r:
                orjson.loads(await r.read())

        await run("aiohttp", aiohttp_call, conns, total // 10)  # warm-up
        await run("aiohttp", aiohttp_call, conns, total)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=conns)
    async with httpx.AsyncClient(limits=limits) as client:
        async def httpx_call() -> None:
            r = await client.post(URL, content=BODY, headers=HEADERS)
            orjson.loads(r.content)

        await run("httpx", httpx_call, conns, total // 10)
        await run("httpx", httpx_call, conns, total)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    uvloop.run(main(args.conns, args.requests))
