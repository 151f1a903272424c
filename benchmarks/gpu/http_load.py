"""Phase 3: all requests at once through a running ``tokenway serve``, streaming, over HTTP (aiohttp).

Waits for ``/ready``, then sends every request concurrently to ``/v1/chat/completions`` with
``stream: true`` and ``include_usage``, and times: the first content chunk of each (TTFT), the
whole run (output tok/s from the usage each stream reports), and ``/health`` every 250 ms
meanwhile, to show whether the server stayed responsive while the GPU was busy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

from workload import PhaseResult, build_workload, percentile


async def wait_ready(session: Any, base_url: str, limit_s: float, server_pid: int | None) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        if server_pid is not None and not os.path.exists(f"/proc/{server_pid}"):  # noqa: ASYNC240
            raise SystemExit("the server exited before it was ready; see its log")
        try:
            async with session.get(f"{base_url}/ready") as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except OSError:
            pass
        await asyncio.sleep(1.0)
    raise SystemExit(f"{base_url}/ready did not answer 200 within {limit_s:.0f} s; see the server log")


async def stream_one(session: Any, url: str, body: dict[str, Any]) -> tuple[int, float | None]:
    import orjson

    sent = time.perf_counter()
    first = None
    chunks = 0
    usage = None
    async with session.post(url, data=orjson.dumps(body), headers={"content-type": "application/json"}) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:300]}")
        async for line in r.content:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                break
            event = orjson.loads(data)
            usage = event.get("usage") or usage
            for choice in event.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - sent
    return (usage["completion_tokens"] if usage else chunks), first


async def probe_health(session: Any, base_url: str, stop: asyncio.Event, latencies: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        async with session.get(f"{base_url}/health") as response:
            await response.read()
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(0.25)


async def run(args: argparse.Namespace) -> None:
    import aiohttp

    workload = build_workload(args.model, args.requests, args.input_tokens)
    connector = aiohttp.TCPConnector(limit=0)  # one connection per request, all at once
    timeout = aiohttp.ClientTimeout(total=None, sock_read=args.ready_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        ready_s = await wait_ready(session, args.base_url, args.ready_timeout, args.server_pid)
        url = f"{args.base_url}/v1/chat/completions"
        bodies = [
            {
                "model": args.model_name,
                "messages": messages,
                "max_tokens": args.output_tokens,
                "temperature": 0,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            for messages in workload.messages
        ]
        stop = asyncio.Event()
        health: list[float] = []
        prober = asyncio.create_task(probe_health(session, args.base_url, stop, health))
        started = time.perf_counter()
        results = await asyncio.gather(*(stream_one(session, url, b) for b in bodies), return_exceptions=True)
        wall = time.perf_counter() - started
        stop.set()
        await prober

    done = [r for r in results if isinstance(r, tuple)]
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    completion = sum(count for count, _ in done)
    ttfts = [first for _, first in done if first is not None]
    PhaseResult(
        phase="gateway HTTP streaming",
        requests=len(bodies),
        ok=len(done),
        prompt_tokens_mean=sum(map(len, workload.prompt_ids)) / len(workload.prompt_ids),
        completion_tokens=completion,
        wall_s=round(wall, 3),
        output_tok_s=round(completion / wall, 1),
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p99_s=percentile(ttfts, 99),
        notes={
            "ready_after_s": round(ready_s, 1),
            "errors": errors[:3],
            "error_count": len(errors),
            "health_probes": len(health),
            "health_p50_ms": round(1000 * (percentile(health, 50) or 0), 1),
            "health_max_ms": round(1000 * max(health, default=0), 1),
        },
    ).write(args.json)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="model folder, for the tokenizer that sizes prompts")
    parser.add_argument("--model-name", required=True, help="the public model name in the gateway config")
    parser.add_argument("--base-url", default="http://127.0.0.1:8765")
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--input-tokens", type=int, default=256)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--server-pid", type=int, help="stop waiting for /ready if this process exits")
    parser.add_argument("--json", type=Path, required=True)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
