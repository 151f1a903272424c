"""Local embeddings per second, one client against 32 concurrent ones: the encoder alone and through
the gateway over HTTP, with the batch sizes the dynamic batcher formed.

    python benchmarks/embeddings/run.py [--seconds 10] [--clients 32] [--max-wait-ms 2] [--max-batch 64]
        [--workers 1] [--json out.json]

Every request embeds one short sentence, never the same one twice (so the exact cache, which is off
here anyway, could not help). "Encoder alone" times the model by batch size, then drives
``DynamicBatcher`` over the bundled MiniLM in this process, as the ``local-embed`` provider does;
"through the gateway" starts ``tokenway``'s app under uvicorn in a child process (``--serve``) and
posts to ``/v1/embeddings`` with aiohttp. Each phase runs a warm-up second, then ``--seconds``. On a
small shared box, compare ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ANIMALS = ["cat", "dog", "heron", "otter", "fox", "moth", "whale", "crow"]
VERBS = ["watches", "follows", "ignores", "greets", "chases", "hears"]
THINGS = ["red ball", "old boat", "quiet river", "tall fence", "morning train", "paper kite"]


def sentences() -> Iterator[str]:
    """Short, distinct sentences, forever."""
    for i in itertools.count():
        yield (f"The {ANIMALS[i % 8]} {VERBS[i // 8 % 6]} the {THINGS[i // 48 % 6]} on day {i}.")


CONFIG = """
cache: {{enabled: false}}
logging: {{requests: false}}
models:
  - name: local-embed
    deployments:
      - provider: local-embed
        max_batch: {max_batch}
        max_wait_ms: {max_wait_ms}
        workers: {workers}
"""


async def drive(send: Any, clients: int, seconds: float) -> dict[str, float]:
    """``clients`` loops each awaiting ``send(text)`` back to back: texts per second and latency."""
    texts = sentences()
    latencies: list[float] = []
    stop = time.perf_counter() + 1.0  # warm-up: not counted

    async def client() -> None:
        while time.perf_counter() < stop:
            await send(next(texts))

    await asyncio.gather(*(client() for _ in range(clients)))
    started = time.perf_counter()
    stop = started + seconds

    async def measured() -> None:
        while (now := time.perf_counter()) < stop:
            await send(next(texts))
            latencies.append(time.perf_counter() - now)

    await asyncio.gather(*(measured() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"per_s": round(len(latencies) / elapsed, 1), "requests": len(latencies),
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2)}


def sizes_of(counter: Counter[int]) -> dict[str, Any]:
    calls = sum(counter.values())
    items = sum(size * n for size, n in counter.items())
    return {"model_calls": calls, "mean_batch": round(items / calls, 2) if calls else 0,
            "max_batch": max(counter) if counter else 0,
            "histogram": {str(size): n for size, n in sorted(counter.items())}}


async def encoder_alone(args: argparse.Namespace) -> dict[str, Any]:
    from tokenway.cache.semantic import Embedder
    from tokenway.embeddings.batcher import DynamicBatcher

    embedder = await asyncio.to_thread(Embedder.load)
    texts = sentences()
    by_batch = {}
    for size in (1, 8, 32, 64):  # the model alone, one call after another: what a bigger batch saves
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < 2.0:
            embedder.encode_items([next(texts) for _ in range(size)])
            done += size
        by_batch[str(size)] = round(done / (time.perf_counter() - started), 1)
    out: dict[str, Any] = {"texts_per_s_by_batch_size": by_batch}
    for clients in (1, args.clients):
        batcher = DynamicBatcher(embedder.encode_items, args.max_batch, args.max_wait_ms / 1000, args.workers)
        batcher.start()

        async def send(text: str, batcher: DynamicBatcher = batcher) -> None:
            await batcher.encode([text])

        result = await drive(send, clients, args.seconds)
        await batcher.aclose()
        result["batches"] = sizes_of(batcher.stats.sizes)
        out[f"clients_{clients}"] = result
    return out


MARK = "@@ "  # the child's answers, told apart from the gateway's own log lines on its stdout


def said(child: subprocess.Popen[str]) -> str:
    """The child's next answer (its log lines skipped)."""
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith(MARK):
            return line[len(MARK):].strip()
    raise RuntimeError("the gateway child ended")


def gateway_child(args: argparse.Namespace) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, "--serve", "--max-batch", str(args.max_batch),
                             "--max-wait-ms", str(args.max_wait_ms), "--workers", str(args.workers)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(  # the checkout, for ``tests``
                                p for p in (os.environ.get("PYTHONPATH"), str(HERE.parent.parent)) if p)})


async def through_gateway(args: argparse.Namespace, child: subprocess.Popen[str]) -> dict[str, Any]:
    import aiohttp

    assert child.stdin is not None and child.stdout is not None
    base = said(child)  # the child says its URL once it is ready
    out: dict[str, Any] = {}
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            for clients in (1, args.clients):
                child.stdin.write("stats\n")
                child.stdin.flush()
                before = Counter({int(k): v for k, v in json.loads(said(child)).items()})

                async def send(text: str) -> None:
                    async with session.post(base + "/v1/embeddings", json={
                            "model": "local-embed", "input": text, "encoding_format": "base64"}) as resp:
                        await resp.read()
                        assert resp.status == 200, resp.status

                result = await drive(send, clients, args.seconds)
                child.stdin.write("stats\n")
                child.stdin.flush()
                after = Counter({int(k): v for k, v in json.loads(said(child)).items()})
                result["batches"] = sizes_of(after - before)  # warm-up included: the child counts all
                out[f"clients_{clients}"] = result
    finally:
        child.stdin.close()
    return out


def serve(args: argparse.Namespace) -> None:
    """The child: the gateway on a free port; prints its URL when ready, then the batcher's batch sizes
    (JSON) for each ``stats`` line read on stdin; stops at end of input."""
    import socket
    import threading

    import uvicorn

    from tests.servers import wait_until_ready
    from tokenway.app import create_app
    from tokenway.config import Settings, parse_config
    from tokenway.http_protocol import server_options
    from tokenway.providers.local_embed import LocalEmbedProvider

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(Settings(host="127.0.0.1", port=port, data_dir=Path("/tmp/tokenway-bench-embeddings")),
                     parse_config(CONFIG.format(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                                                 workers=args.workers)))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning",
                                           **server_options(app.config.limits)))
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(base, 120)
    print(MARK + base, flush=True)
    provider = app.models.lookup("local-embed")[0].provider
    assert isinstance(provider, LocalEmbedProvider) and provider.batcher is not None
    for line in sys.stdin:
        if line.strip() == "stats":
            print(MARK + json.dumps(dict(provider.batcher.stats.sizes)), flush=True)
    server.should_exit = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="batches encoded at once (one thread each)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    results = {"settings": {"seconds": args.seconds, "clients": args.clients, "max_wait_ms": args.max_wait_ms,
                            "max_batch": args.max_batch, "workers": args.workers},
               "encoder_alone": asyncio.run(encoder_alone(args)),
               "gateway_http": {}}
    child = gateway_child(args)
    try:
        results["gateway_http"] = asyncio.run(through_gateway(args, child))
    finally:
        child.wait(30)
    for phase in ("encoder_alone", "gateway_http"):
        one, many = results[phase]["clients_1"]["per_s"], results[phase][f"clients_{args.clients}"]["per_s"]
        results[phase]["ratio"] = round(many / one, 2)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
