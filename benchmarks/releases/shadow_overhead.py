"""What shadow traffic costs the primary: its latency with a shadow on every request, against none.

Two ``tokenway serve`` processes on this box serve the same released model ``chat`` from the same
fake upstream; one copies ``--percent`` of the requests (default all) to a candidate that answers 50 ms later (so copies
are in flight during the primaries), the other has no shadow. Rounds alternate between them, so
both see the same box noise; every primary is a JSON chat completion from 8 concurrent clients.
Reports p50/p99 of each and the difference, and writes ``--out`` (JSON) and the same name ``.svg``.

    .venv/bin/python benchmarks/releases/shadow_overhead.py --rounds 12 --requests 300 --clients 2 \
        --percent 10 --out benchmarks/releases/shadow_10.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fakes import FakeUpstream
from tests.servers import free_port, wait_until_ready

CONFIG = """\
models:
  - name: chat
    deployments: [{{name: chat-a, api_base: "{upstream}/fast/v1"}}]
    release:
      versions: [{{name: stable, model: chat, weight: 1}}]
{shadow}
  - name: candidate
    deployments: [{{name: candidate-a, api_base: "{upstream}/slow/v1"}}]
"""
SHADOW = "      shadow: {{model: candidate, percent: {percent}, max_concurrent: 64}}"


def serve(tmp: Path, name: str, text: str) -> tuple[subprocess.Popen[bytes], str]:
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    port = free_port()
    env = {**os.environ, "TOKENWAY_PORT": str(port), "TOKENWAY_CONFIG": str(path),
           "TOKENWAY_DATA_DIR": str(tmp / name)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "tokenway", "serve", "--log-level", "warning"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(base, alive=lambda: proc.poll() is None)
    return proc, base


async def burst(base: str, requests: int, clients: int) -> list[float]:
    """``requests`` chat completions from ``clients`` concurrent callers; each one's latency in seconds."""
    body = {"model": "chat", "messages": [{"role": "user", "content": "hello"}]}
    latencies: list[float] = []
    left = iter(range(requests))
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def caller() -> None:
            for _ in left:
                started = time.perf_counter()
                answer = await client.post("/v1/chat/completions", json=body)
                latencies.append(time.perf_counter() - started)
                assert answer.status_code == 200, answer.text

        await asyncio.gather(*(caller() for _ in range(clients)))
    return latencies


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=300, help="per round and variant")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--percent", type=float, default=100.0, help="the shadow's share of requests")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args()
    from tqdm import tqdm

    upstream = FakeUpstream(first_delay=0.05, chunk_delay=0.0).start()
    url = f"http://127.0.0.1:{upstream.port}"
    samples: dict[str, list[float]] = {"no shadow": [], "with shadow": []}
    per_round: dict[str, list[float]] = {name: [] for name in samples}
    with tempfile.TemporaryDirectory() as tmp:
        shadowed = CONFIG.format(upstream=url, shadow=SHADOW.format(percent=args.percent))
        servers = {"no shadow": serve(Path(tmp), "off", CONFIG.format(upstream=url, shadow="")),
                   "with shadow": serve(Path(tmp), "on", shadowed)}
        try:
            for _, base in servers.values():  # warm up: connections, first-call paths
                asyncio.run(burst(base, 100, args.clients))
            with tqdm(total=args.rounds * 2, desc="rounds", unit="burst") as bar:
                for _ in range(args.rounds):
                    for name, (_, base) in servers.items():
                        latencies = asyncio.run(burst(base, args.requests, args.clients))
                        samples[name] += latencies
                        per_round[name].append(percentile(latencies, 0.99))
                        bar.update()
            shadows = httpx.get(servers["with shadow"][1] + "/admin/releases").json()["models"]["chat"]["shadow"]
        finally:
            for proc, _ in servers.values():
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
            upstream.stop()
    variants = {
        name: {"n": len(values), "p50_ms": round(percentile(values, 0.5), 3),
               "p99_ms": round(percentile(values, 0.99), 3),
               "p99_by_round_median_ms": round(statistics.median(per_round[name]), 3)}
        for name, values in samples.items()
    }
    off, on = variants["no shadow"], variants["with shadow"]
    result = {
        "shadow_percent": args.percent, "clients": args.clients,
        "variants": variants,
        "p99_added_ms": round(on["p99_ms"] - off["p99_ms"], 3),
        "p99_by_round_added_ms": round(on["p99_by_round_median_ms"] - off["p99_by_round_median_ms"], 3),
        "shadows": {"sent": sum(v["requests"] for v in shadows["by_version"].values()),
                    "skipped": shadows["skipped"]},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(per_round, args.out.with_suffix(".svg"), args.percent)
    print(json.dumps(result, indent=2))


def plot(per_round: dict[str, list[float]], path: Path, percent: float) -> None:
    from tokenway.plots import line_chart

    series = [(name, [float(i) for i in range(1, len(values) + 1)], values) for name, values in per_round.items()]
    path.write_text(line_chart(series, f"Primary p99 per round, with and without a {percent:g}% shadow", "round",
                               "primary p99 (ms)", markers=True, ymin=0.0))

if __name__ == "__main__":
    main()
