"""Routing benchmark: TTFT of each balancing strategy in front of simulated vLLM workers.

Each fake worker models what makes placement matter on a real engine:
  * ``slots`` sequences run at once; the rest wait in a FIFO queue;
  * a KV prefix cache holding ``kv_prefixes`` shared prefixes (LRU): prefill costs
    ``prefill_ms_per_1k`` per 1k *uncached* prompt tokens, so a cached 2k-token prefix
    is nearly free and a miss is not;
  * ``/metrics`` with vLLM's names (num_requests_waiting/running, kv_cache_usage_perc).

Workload: ``groups`` x ``users`` (20 x 5) users; every group shares a ~2k-token system prompt,
each request adds a short user turn; Poisson arrivals at ``rate``/s. The gateway is the real
tokenway app (uvicorn, real sockets); TTFT is measured at the client on the first SSE chunk.

    python benchmarks/routing/run.py            # all strategies, table + results.json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import statistics
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from aiohttp import web

from tokenway.app import create_app
from tokenway.config import Settings, parse_config

STRATEGIES = ["round_robin", "least_in_flight", "latency", "engine", "prefix"]


class FakeVLLM:
    def __init__(self, slots: int, kv_prefixes: int, prefill_ms_per_1k: float, decode_tokens: int,
                 decode_ms: float) -> None:
        self.slots, self.kv_prefixes = slots, kv_prefixes
        self.prefill_ms_per_1k, self.decode_tokens, self.decode_ms = prefill_ms_per_1k, decode_tokens, decode_ms
        self.cache: OrderedDict[str, None] = OrderedDict()
        self.waiting = 0
        self.running = 0
        self.hits = self.misses = 0
        self._sem: asyncio.Semaphore | None = None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.slots)
        self.waiting += 1
        async with self._sem:
            self.waiting -= 1
            self.running += 1
            try:
                key = hashlib.blake2b(system.encode(), digest_size=8).hexdigest()
                uncached = len(user) / 4
                if key in self.cache:
                    self.cache.move_to_end(key)
                    self.hits += 1
                else:
                    uncached += len(system) / 4
                    self.misses += 1
                await asyncio.sleep(uncached / 1000 * self.prefill_ms_per_1k / 1000)
                self.cache[key] = None
                self.cache.move_to_end(key)
                while len(self.cache) > self.kv_prefixes:
                    self.cache.popitem(last=False)
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await response.prepare(request)
                for i in range(self.decode_tokens):
                    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
                             "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]}
                    await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                    await asyncio.sleep(self.decode_ms / 1000)
                await response.write(b"data: [DONE]\n\n")
                return response
            finally:
                self.running -= 1

    async def metrics(self, _: web.Request) -> web.Response:
        kv = len(self.cache) / self.kv_prefixes
        text = (f'vllm:num_requests_waiting{{model_name="m"}} {self.waiting}\n'
                f'vllm:num_requests_running{{model_name="m"}} {self.running}\n'
                f'vllm:kv_cache_usage_perc{{model_name="m"}} {kv}\n')
        return web.Response(text=text)


async def start_worker(worker: FakeVLLM) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", worker.chat)
    app.router.add_get("/metrics", worker.metrics)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def start_gateway(yaml: str, port: int) -> uvicorn.Server:
    app = create_app(Settings(host="127.0.0.1", port=port), parse_config(yaml))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, loop="asyncio", lifespan="on",
                                           log_level="warning", access_log=False))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("gateway did not start")


def gateway_yaml(strategy: str, ports: list[int], slack: float) -> str:
    rows = "".join(
        f"      - {{provider: openai, name: w{i}, api_base: 'http://127.0.0.1:{p}/v1', "
        f"engine_metrics: {{kind: vllm, interval: 0.1}}, timeouts: {{first_token: 120, total: 300}}}}\n"
        for i, p in enumerate(ports)
    )
    routing = f"{{strategy: {strategy}, prefix_chars: 2048, affinity_slack: {slack}}}"
    return (f"models:\n  - name: m\n    routing: {routing}\n"
            f"    deployments:\n{rows}logging: {{requests: false}}\n")


async def one(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> tuple[float, float]:
    started = time.perf_counter()
    ttft = None
    async with client.stream("POST", url, json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: ") and ttft is None:
                ttft = time.perf_counter() - started
    return ttft or float("nan"), time.perf_counter() - started


async def workload(base: str, args: argparse.Namespace) -> dict[str, float]:
    rng = random.Random(args.seed)
    words = "the of and to in is was for on that with as by at from his it an were are which this be".split()
    prefixes = [f"[group {g}] " + " ".join(rng.choice(words) for _ in range(args.prefix_tokens * 4 // 3))
                for g in range(args.groups)]
    users = [(g, u) for g in range(args.groups) for u in range(args.users)]
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        tasks = []
        started = time.perf_counter()
        for i in range(args.requests):
            g, u = rng.choice(users)
            body = {"model": "m", "stream": True, "max_tokens": 20, "messages": [
                {"role": "system", "content": prefixes[g]},
                {"role": "user",
                 "content": f"user {u} question {i}: " + " ".join(rng.choice(words) for _ in range(30))},
            ]}
            tasks.append(asyncio.create_task(one(client, base + "/v1/chat/completions", body)))
            await asyncio.sleep(rng.expovariate(args.rate))
        results = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    ttfts = sorted(t for t, _ in results)
    q = statistics.quantiles(ttfts, n=100)
    return {"p50_ttft_ms": q[49] * 1000, "p90_ttft_ms": q[89] * 1000, "p99_ttft_ms": q[98] * 1000,
            "mean_e2e_ms": statistics.fmean(e for _, e in results) * 1000,
            "throughput_rps": len(results) / elapsed}


async def run_strategy(strategy: str, args: argparse.Namespace, port: int) -> dict[str, Any]:
    workers = [FakeVLLM(args.slots, args.kv_prefixes, args.prefill_ms_per_1k, 20, args.decode_ms)
               for _ in range(args.workers)]
    started = [await start_worker(w) for w in workers]
    yaml = gateway_yaml(strategy, [p for _, p in started], args.affinity_slack)
    server = await asyncio.to_thread(start_gateway, yaml, port)
    try:
        result = await workload(f"http://127.0.0.1:{port}", args)
    finally:
        server.should_exit = True
        for runner, _ in started:
            await runner.cleanup()
    hits = sum(w.hits for w in workers)
    result["prefix_hit_rate"] = hits / max(1, hits + sum(w.misses for w in workers))
    return {"strategy": strategy, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--kv-prefixes", type=int, default=8)
    parser.add_argument("--prefill-ms-per-1k", type=float, default=250.0)
    parser.add_argument("--decode-ms", type=float, default=10.0)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--prefix-tokens", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--affinity-slack", type=float, default=8.0)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args()
    rows = []
    for i, strategy in enumerate(args.strategies.split(",")):
        row = asyncio.run(run_strategy(strategy, args, 18700 + i))
        rows.append(row)
        print(f"{strategy:16} p50 {row['p50_ttft_ms']:8.1f} ms  p90 {row['p90_ttft_ms']:8.1f} ms  "
              f"p99 {row['p99_ttft_ms']:8.1f} ms  {row['throughput_rps']:5.1f} req/s  "
              f"prefix hits {row['prefix_hit_rate']:.0%}", flush=True)
    settings = {k: str(v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"settings": settings, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
