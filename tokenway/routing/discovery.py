"""Workers found, not only listed: keep a model's deployments in step with what DNS or Kubernetes finds.

A deployment entry with a ``discovery`` block is a template. Its source (``dns_source.py``,
``kubernetes_source.py``) reports the set of worker addresses whenever it may have changed; here
each new address becomes a deployment (the template's fields, ``api_base`` from the address) once
the worker's ``/models`` lists the entry's model — a worker still loading its weights is asked again
every ``interval_s`` — and each address that went away leaves routing at once, while the calls it
already has run to their end before its provider is closed. Nothing restarts; static entries are
untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from tokenway.config import DeploymentConfig, GatewayConfig
from tokenway.deployments import Deployment
from tokenway.observability.logging import JsonLog
from tokenway.routing.health import Monitors
from tokenway.routing.options import DiscoveryConfig

_DRAIN_POLL_S = 0.1  # how often a leaving worker's in-flight count is looked at


@dataclass(frozen=True, slots=True)
class Address:
    """One worker as a source finds it."""

    host: str  # an IP address
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def api_base(self, discovery: DiscoveryConfig) -> str:
        return f"{discovery.scheme}://{self}{discovery.path}"


class Source(Protocol):
    def watch(self) -> AsyncIterator[frozenset[Address]]:
        """Yield every worker address known now, each time that may have changed. A lookup that fails
        yields nothing (the workers known stay), never an empty set; only cancellation ends it."""
        ...


class Roster(Protocol):
    """Where a worker joins and leaves routing (``policies/routing.py``'s ``Route``)."""

    def join(self, model: str, deployment: Deployment) -> None: ...

    def leave(self, model: str, deployment: Deployment) -> None: ...


Build = Callable[[DeploymentConfig], Deployment]  # a deployment with its provider (the app's registry)
OpenSource = Callable[[DiscoveryConfig, aiohttp.ClientSession, JsonLog], Source]


def open_source(discovery: DiscoveryConfig, http: aiohttp.ClientSession, log: JsonLog) -> Source:
    """The source a ``discovery`` block names; imported on use."""
    if discovery.dns is not None:
        from tokenway.routing.dns_source import DnsSource

        return DnsSource(discovery, log)
    from tokenway.routing.kubernetes_source import EndpointSliceSource, InCluster

    assert discovery.kubernetes is not None, "the config allows exactly one source"
    return EndpointSliceSource(discovery, InCluster.from_environment(), http, log)


class Workers:
    """One template's discovered workers, kept in step with its source."""

    def __init__(
        self, model: str, template: DeploymentConfig, source: Source, roster: Roster, build: Build,
        monitors: Monitors, log: JsonLog,
    ) -> None:
        assert template.discovery is not None
        self.model = model
        self._template = template
        self._discovery = template.discovery
        self._source = source
        self._roster = roster
        self._build = build
        self._monitors = monitors
        self._log = log
        self.live: dict[Address, Deployment] = {}
        self.waiting: dict[Address, str] = {}  # found but not joined yet, and why
        self._found: frozenset[Address] | None = None  # None until the source's first answer
        self._changed = asyncio.Event()
        self._leaving: dict[asyncio.Task[None], Deployment] = {}

    async def run(self) -> None:
        follow = asyncio.create_task(self._follow())
        try:
            while True:
                # A change is acted on at once; the interval brings back workers that were not ready.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), self._discovery.interval_s)
                self._changed.clear()
                if follow.done():
                    follow.result()  # a source that ended by itself is a bug: let it show
                if self._found is not None:
                    await self._reconcile(self._found)
        finally:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow

    async def aclose(self) -> None:
        """Stop waiting for leaving workers' calls (the server is stopping) and close their providers."""
        for task in self._leaving:
            task.cancel()
        await asyncio.gather(*self._leaving, return_exceptions=True)
        await asyncio.gather(*(d.provider.aclose() for d in self._leaving.values()), return_exceptions=True)
        self._leaving.clear()

    def snapshot(self) -> dict[str, Any]:
        kubernetes = self._discovery.kubernetes
        source = f"dns:{self._discovery.dns}" if kubernetes is None else f"kubernetes:{kubernetes.service}"
        return {
            "source": source,
            "workers": sorted(d.name for d in self.live.values()),
            "waiting": {str(address): why for address, why in self.waiting.items()},
            "leaving": sorted(d.name for d in self._leaving.values()),
        }

    async def _follow(self) -> None:
        async for found in self._source.watch():
            self._found = found
            self._changed.set()

    async def _reconcile(self, found: frozenset[Address]) -> None:
        for address in [a for a in self.live if a not in found]:
            self._leave(address)
        for address in [a for a in self.waiting if a not in found]:
            del self.waiting[address]
        new = [a for a in found if a not in self.live]
        if new:
            await asyncio.gather(*(self._join(address) for address in new))

    async def _join(self, address: Address) -> None:
        template = self._template
        config = template.model_copy(update={
            "name": f"{template.name}@{address}", "api_base": address.api_base(self._discovery), "discovery": None,
        })
        deployment = self._build(config)
        try:
            served = await asyncio.wait_for(deployment.provider.models(), template.timeouts.connect)
        except Exception as exc:  # any failure to list its models means: not ready yet, ask again later
            self._wait(address, f"GET {config.api_base}/models failed: {exc!r}")
            await deployment.provider.aclose()
            return
        if config.model not in served:
            self._wait(address, f"serves {served}, not {config.model!r} (set the deployment's 'model:' to one)")
            await deployment.provider.aclose()
            return
        await deployment.provider.start()
        self._monitors.watch(deployment)
        self._roster.join(self.model, deployment)
        self.live[address] = deployment
        self.waiting.pop(address, None)
        self._log.event("worker_joined", model=self.model, deployment=deployment.name, api_base=config.api_base)

    def _wait(self, address: Address, why: str) -> None:
        if self.waiting.get(address) != why:  # logged once per reason, not every interval
            self._log.event("worker_not_ready", level="warning", model=self.model, address=str(address), reason=why)
        self.waiting[address] = why

    def _leave(self, address: Address) -> None:
        deployment = self.live.pop(address)
        self._roster.leave(self.model, deployment)
        self._log.event("worker_left", model=self.model, deployment=deployment.name,
                        in_flight=deployment.in_flight)
        task = asyncio.get_running_loop().create_task(self._retire(deployment))
        self._leaving[task] = deployment
        task.add_done_callback(self._retired)

    def _retired(self, task: asyncio.Task[None]) -> None:
        self._leaving.pop(task, None)

    async def _retire(self, deployment: Deployment) -> None:
        """Close a worker's provider once the calls it still has are done (or their longest timeout passed)."""
        await self._monitors.forget(deployment)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deployment.config.timeouts.total
        # in_flight has no event to wait on (its writer is the admission policy, on the request path);
        # it is looked at only while a worker leaves.
        while deployment.in_flight > 0 and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_DRAIN_POLL_S)
        await deployment.provider.aclose()


class Discovery:
    """Every deployment entry with a ``discovery`` block, each followed by a ``Workers`` task."""

    def __init__(
        self, config: GatewayConfig, roster: Roster, build: Build, monitors: Monitors, http: aiohttp.ClientSession,
        log: JsonLog, sources: OpenSource = open_source,
    ) -> None:
        self._log = log
        self.workers: list[Workers] = [
            Workers(model.name, template, sources(template.discovery, http, log), roster, build, monitors, log)
            for model in config.models for template in model.deployments if template.discovery is not None
        ]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(workers.run()) for workers in self.workers]
        for task in self._tasks:
            task.add_done_callback(self._stopped)

    def _stopped(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._log.event("discovery_failed", level="error", error=repr(task.exception()))

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for workers in self.workers:
            out.setdefault(workers.model, []).append(workers.snapshot())
        return out

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(workers.aclose() for workers in self.workers))
