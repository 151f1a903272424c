"""Active health checks, and the background tasks that keep routing's view of workers fresh.

A deployment with a ``health_check`` is probed every ``interval``: ``unhealthy_after``
failed probes in a row take it out of routing, ``healthy_after`` good ones put it back.
Passive outlier detection is the circuit breaker, fed by live traffic (``breaker.py``): a
worker failing calls is ejected within ``consecutive_failures`` calls, without waiting for
the next probe. Routing never lets health checks empty a model: when every deployment looks
unhealthy it tries them anyway (a broken probe must not take the whole model down).
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import aiohttp

from tokenway.deployments import Deployment
from tokenway.routing.engine_metrics import scrape_forever
from tokenway.routing.options import HealthCheckConfig


def probe_url(deployment: Deployment, config: HealthCheckConfig) -> str:
    """``path`` relative to ``api_base``, or to its host when it starts with ``/``."""
    base = (deployment.config.api_base or "").rstrip("/")
    if config.path.startswith("/"):
        parts = urlsplit(base)
        return f"{parts.scheme}://{parts.netloc}{config.path}"
    return f"{base}/{config.path}"


async def check_forever(deployment: Deployment, config: HealthCheckConfig, http: aiohttp.ClientSession) -> None:
    url = probe_url(deployment, config)
    headers = dict(deployment.config.headers)
    key = deployment.config.api_key()
    if key:
        headers["authorization"] = f"Bearer {key}"
    timeout = aiohttp.ClientTimeout(total=config.timeout)
    good = bad = 0
    while True:
        try:
            async with http.get(url, headers=headers, timeout=timeout) as resp:
                ok = resp.status < 500 and resp.status != 404
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        good, bad = (good + 1, 0) if ok else (0, bad + 1)
        if not deployment.healthy and good >= config.healthy_after:
            deployment.healthy = True
        elif deployment.healthy and bad >= config.unhealthy_after:
            deployment.healthy = False
        await asyncio.sleep(config.interval)


class Monitors:
    """The health-check and metrics-scrape tasks of every deployment that asks for them, started
    when a deployment joins and stopped when it leaves (discovered workers come and go)."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self._http = http
        self._tasks: dict[Deployment, list[asyncio.Task[None]]] = {}

    def watch(self, deployment: Deployment) -> None:
        loop = asyncio.get_running_loop()
        tasks = []
        if deployment.config.health_check is not None:
            tasks.append(loop.create_task(check_forever(deployment, deployment.config.health_check, self._http)))
        if deployment.config.engine_metrics is not None:
            tasks.append(loop.create_task(scrape_forever(deployment, deployment.config.engine_metrics, self._http)))
        if tasks:
            self._tasks[deployment] = tasks

    async def forget(self, deployment: Deployment) -> None:
        tasks = self._tasks.pop(deployment, [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        for deployment in list(self._tasks):
            await self.forget(deployment)
