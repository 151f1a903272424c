"""The x-tokenway-priority header orders the admission queue (higher first, then arrival)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.fakes import FakeUpstream
from tests.servers import running_gateway
from tests.test_gateway_openai import MESSAGES, config


def test_higher_priority_leaves_the_queue_first(upstream: FakeUpstream) -> None:
    upstream.first_delay = 0.4
    yaml = config(upstream, "slowfirst", deployment="max_concurrency: 1").replace(
        "    deployments:", "    queue: {size: 8, max_wait: 10}\n    deployments:", 1)
    finished: list[str] = []

    def call(name: str, priority: int) -> None:
        r = httpx.post(base + "/v1/chat/completions", timeout=20, headers={"x-tokenway-priority": str(priority)},
                       json={"model": "m", "messages": MESSAGES, "stream": True, "user": name})
        assert r.status_code == 200
        finished.append(name)

    with running_gateway(yaml) as base, ThreadPoolExecutor(4) as pool:
        first = pool.submit(call, "holder", 0)
        time.sleep(0.15)  # the holder has the only slot
        low = pool.submit(call, "low", 0)
        time.sleep(0.1)
        high = pool.submit(call, "high", 5)
        for future in (first, low, high):
            future.result()
    assert finished == ["holder", "high", "low"]
    assert [seen.body["user"] for seen in upstream.seen] == ["holder", "high", "low"]
