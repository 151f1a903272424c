"""Scrape vLLM/SGLang ``/metrics`` for queue depth and KV-cache use (engine-aware routing).

Only the handful of gauges routing needs are read, summed over label sets (one engine may
report per model or per data-parallel rank). vLLM renamed ``gpu_cache_usage_perc`` to
``kv_cache_usage_perc``; both are accepted, the new name first. A failed scrape clears the
deployment's engine view, so routing falls back to the gateway's own in-flight counts rather
than trusting numbers that are getting old.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import aiohttp

from tokenway.deployments import Deployment, EngineLoad
from tokenway.routing.options import EngineConfig

_NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "vllm": {
        "waiting": ("vllm:num_requests_waiting",),
        "running": ("vllm:num_requests_running",),
        "kv": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    },
    "sglang": {
        "waiting": ("sglang:num_queue_reqs",),
        "running": ("sglang:num_running_reqs",),
        "kv": ("sglang:token_usage",),
    },
}


def parse_gauges(text: str) -> dict[str, float]:
    """Prometheus text format -> metric name: value summed over its label sets."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        if brace >= 0:
            name = line[:brace]
            rest = line[line.rfind("}") + 1:].split()
        else:
            name, _, tail = line.partition(" ")
            rest = tail.split()
        if not rest:
            continue
        try:
            value = float(rest[0])
        except ValueError:
            continue
        out[name] = out.get(name, 0.0) + value
    return out


def engine_load(kind: str, gauges: dict[str, float], in_flight: int) -> EngineLoad | None:
    names = _NAMES[kind]

    def first(key: str) -> float | None:
        return next((gauges[n] for n in names[key] if n in gauges), None)

    waiting, running, kv = first("waiting"), first("running"), first("kv")
    if waiting is None and running is None:
        return None  # not the engine we were told it is
    return EngineLoad(waiting=waiting or 0.0, running=running or 0.0, kv_usage=min(1.0, kv or 0.0),
                      at=time.monotonic(), in_flight_at_scrape=in_flight)


def metrics_url(deployment: Deployment, config: EngineConfig) -> str:
    if config.metrics_url:
        return config.metrics_url
    parts = urlsplit(deployment.config.api_base or "")
    return f"{parts.scheme}://{parts.netloc}/metrics"


async def scrape_forever(deployment: Deployment, config: EngineConfig, http: aiohttp.ClientSession) -> None:
    """Refresh ``deployment.engine`` every ``config.interval`` seconds until cancelled."""
    url = metrics_url(deployment, config)
    timeout = aiohttp.ClientTimeout(total=max(1.0, 5 * config.interval))
    while True:
        in_flight = deployment.in_flight
        try:
            async with http.get(url, timeout=timeout) as resp:
                text = await resp.text() if resp.status == 200 else ""
            deployment.engine = engine_load(config.kind, parse_gauges(text), in_flight) if text else None
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
            deployment.engine = None
        await asyncio.sleep(config.interval)
