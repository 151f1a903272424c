"""Webhooks: a job's owner is told when it finishes, with a signed body, retried with backoff.

The body is the job as ``GET /v1/async/{id}`` shows it. The signature header is
``tokenway-signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` with the secret in
``jobs.webhooks.secret_env``; a receiver recomputes it and rejects old timestamps (replays).
Only hosts listed in ``jobs.webhooks.allowed_hosts`` may be called: a gateway must not be made to
send requests to wherever a caller points it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp
import orjson

from tokenway.errors import InvalidRequest
from tokenway.jobs.options import WebhookConfig
from tokenway.jobs.records import Job
from tokenway.observability.logging import JsonLog


def check_webhook_url(url: object, config: WebhookConfig) -> str:
    """The URL if a job may call it; else a 400 naming ``webhook_url``."""
    if not isinstance(url, str):
        raise InvalidRequest("'webhook_url' must be a string URL.", param="webhook_url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("'webhook_url' must be an http(s) URL.", param="webhook_url")
    if not os.environ.get(config.secret_env):
        raise InvalidRequest(f"Webhooks are off on this gateway: it has no signing secret ({config.secret_env} is "
                             "unset), and an unsigned webhook could not be told from a forged one.",
                             param="webhook_url")
    if parts.hostname not in config.allowed_hosts:
        allowed = ", ".join(config.allowed_hosts) or "none are configured"
        raise InvalidRequest(f"The webhook host {parts.hostname!r} is not allowed (jobs.webhooks.allowed_hosts: "
                             f"{allowed}).", param="webhook_url")
    return url


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class Webhooks:
    def __init__(self, config: WebhookConfig, log: JsonLog,
                 record: Callable[[str, str], Awaitable[None]]) -> None:
        self._config = config
        self._log = log
        self._record = record  # (job id, "delivered" | "failed") into the job store
        self._secret = os.environ.get(config.secret_env, "").encode()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sending: set[str] = set()  # job ids being delivered by this process

    def send(self, job: Job) -> None:
        """Deliver in the background; the job's result is already recorded."""
        if job.webhook_url is None or job.id in self._sending:
            return
        self._sending.add(job.id)
        task = asyncio.get_running_loop().create_task(self._deliver(job.webhook_url, job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._sending.discard(job.id))

    async def _deliver(self, url: str, job: Job) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._config.timeout_s))
        body = orjson.dumps({"type": f"job.{job.status}", "data": job.public()})
        wait = self._config.first_backoff_s
        problem = ""
        for attempt in range(1, self._config.max_attempts + 1):
            headers = {"content-type": "application/json",
                       "tokenway-signature": signature(self._secret, int(time.time()), body)}
            try:
                async with self._session.post(url, data=body, headers=headers) as response:
                    if response.status < 300:
                        await self._record(job.id, "delivered")
                        return
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = repr(exc)
            if attempt < self._config.max_attempts:
                await asyncio.sleep(wait)
                wait *= 2
        self._log.event("webhook_failed", level="warning", job_id=job.id, url=url, error=problem,
                        attempts=self._config.max_attempts)
        await self._record(job.id, "failed")

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
