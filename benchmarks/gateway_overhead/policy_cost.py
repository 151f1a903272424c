"""CPU cost of tokenway's own request path, per request, in-process (no sockets, no upstream).

    python benchmarks/gateway_overhead/policy_cost.py [--requests 20000]

Drives the real ASGI app (``create_app``) with an instant provider in place of the backend, so
what is timed is exactly the gateway's code: parsing, policies, response, metrics, log line.
Variants differ only in configuration. Sockets and the upstream client are not in these
numbers; `run.sh` measures those end to end. Redis variants need Redis on 127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from tokenway.app import Gateway
from tokenway.config import Settings, parse_config
from tokenway.context import RequestContext
from tokenway.protocol import Usage
from tokenway.providers.base import Call, Completion

BODY = orjson.dumps({
    "model": "mock-json", "stream": False, "temperature": 0.7,
    "messages": [{"role": "system", "content": "You are a helpful assistant."},
                 {"role": "user", "content": "Write one sentence about gateways."}],
})
REPLY = orjson.dumps({
    "id": "chatcmpl-mock", "object": "chat.completion", "created": 1700000000, "model": "mock",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 20, "total_tokens": 32},
})
BASE = """
models:
  - name: mock-json
    deployments:
      - {provider: openai, api_base: "http://127.0.0.1:9/v1", model: mock, price: {input_per_1m: 0.15, output_per_1m: 0.6}}
"""


class InstantProvider:
    async def start(self) -> None:
        return None

    async def chat(self, call: Call, ctx: RequestContext) -> Completion:
        return Completion(REPLY, Usage(12, 20))

    async def aclose(self) -> None:
        return None


async def run_variant(name: str, extra_yaml: str, settings: dict[str, Any], key: str | None, n: int) -> float:
    with tempfile.TemporaryDirectory() as data_dir:
        app = Gateway(Settings(data_dir=Path(data_dir), **settings), parse_config(BASE + extra_yaml))
        await app.startup()
        for deployment in app._models.all():
            deployment.provider = InstantProvider()  # type: ignore[assignment]
        while not app.ready:
            await asyncio.sleep(0.01)
        if key == "virtual":
            key = await create_virtual_key(app)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
        if key:
            headers.append((b"authorization", f"Bearer {key}".encode()))
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers,
                 "client": ("127.0.0.1", 5000)}
        statuses: list[int] = []

        forever = asyncio.Event()
        body_sent = False

        async def receive() -> dict[str, Any]:
            # The body once per request; after that, like a server, block until the client goes away.
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": BODY, "more_body": False}
            await forever.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal body_sent
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
            elif not message.get("more_body"):
                body_sent = False  # the response is complete: the next call is a new request

        for _ in range(500):  # warm-up
            await app(scope, receive, send)
        statuses.clear()
        started = time.perf_counter()
        for _ in range(n):
            await app(scope, receive, send)
        per_request = (time.perf_counter() - started) / n * 1e6
        await app.shutdown()
    bad = sum(1 for s in statuses if s != 200)
    print(f"{name:38s} {per_request:7.1f} µs/request" + (f"  ({bad} non-200!)" if bad else ""))
    return per_request


async def create_virtual_key(app: Gateway) -> str:
    from tokenway.keys import key_record, new_key

    secret, key_id = new_key()
    record = key_record(secret, key_id, models=["mock-json"], rpm=10**9, tpm=10**12,
                        budget={"amount": 10**6, "period": "day"})
    await app.access.db.put_key(record)
    await app.access.keys.refresh()
    return secret


async def main(n: int) -> None:
    off = "logging: {requests: false}\nobservability: {metrics: false, overhead_header: false}\n"
    results = {
        "bare (no metrics, no log, open)": await run_variant("bare (no metrics, no log, open)", off, {}, None, n),
        "defaults (metrics + log line)": await run_variant("defaults (metrics + log line)", "", {}, None, n),
        "master key": await run_variant("master key", "", {"master_key": "sk-m"}, "sk-m", n),
        "virtual key, embedded stores": await run_variant(
            "virtual key, embedded stores", "", {"master_key": "sk-m"}, "virtual", n),
        "virtual key, Redis counters": await run_variant(
            "virtual key, Redis counters", "", {"master_key": "sk-m", "redis_url": "redis://127.0.0.1:6379/0"},
            "virtual", n),
    }
    base = results["bare (no metrics, no log, open)"]
    print("added over bare: " + ", ".join(f"{k}: +{v - base:.1f} µs" for k, v in results.items() if v is not base))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    asyncio.run(main(parser.parse_args().requests))
