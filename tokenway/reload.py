"""Live reload: the config is a value; a reload builds a new request path from a new one and swaps it in.

``Gateway.serve(config, previous)`` builds one ``Serving`` — the model table, the policy list and
handler, the data-plane and admin routes — reusing the ``Deployment`` of every deployment whose
config did not change, so its provider, breaker, latency and health state carry over. The swap is
a few attribute stores with no ``await`` between them: a request takes the ``Serving`` it arrived
on and finishes there, stream included, while new requests take the new one. The old one retires
once its last data-plane call has ended: its discovery stops at once, and the providers of
deployments the new config dropped are closed after their in-flight calls (jobs included) end.

What is started once per process stays as it was: keys, limits and budgets, jobs, the cache,
guards, stored responses, Redis and the HTTP session. A reload that changes those sections says so
(``restart_required``) and the rest of it applies. ``docs/reload.md`` has the operator's view.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends

from tokenway.api.guards import require_master_key
from tokenway.api.openai import Endpoint
from tokenway.asgi import Receive, Scope, Send
from tokenway.config import ConfigError, DeploymentConfig, GatewayConfig, load_config
from tokenway.deployments import Deployment, ModelTable
from tokenway.errors import GatewayError, InvalidRequest
from tokenway.observability.logging import JsonLog
from tokenway.policies.base import Handler
from tokenway.policies.context_window import ContextWindow
from tokenway.policies.routing import Route
from tokenway.routing.discovery import Discovery

# Sections read once when the process starts (keys store, jobs, cache, guards, listeners): a change
# to them is reported, and waits for a restart.
RESTART_SECTIONS = ("limits", "logging", "cache", "observability", "access", "jobs", "guards", "responses", "prompts",
                    "record", "tiers")

_IN_FLIGHT_POLL_S = 0.05


class ConfigConflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "config_conflict"


@dataclass(eq=False)
class Serving:
    """One config's request path, built whole and swapped in as one value."""

    config: GatewayConfig
    models: ModelTable
    route: Route  # routing state (queues, balancers) the next reload's Route takes over
    handler: Handler
    data_routes: dict[str, Endpoint]
    control: Endpoint
    discovery: Discovery
    context: ContextWindow | None = None  # context shaping, when a model has a window (its learning tasks)
    digest: str = ""
    active: int = 0  # data-plane calls in flight on this Serving
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.digest = self.config.digest()
        self.data_routes = {path: self._tracked(endpoint) for path, endpoint in self.data_routes.items()}

    def _tracked(self, endpoint: Endpoint) -> Endpoint:
        async def call(scope: Scope, receive: Receive, send: Send) -> None:
            self.active += 1
            try:
                await endpoint(scope, receive, send)  # returns once a stream's last byte is sent
            finally:
                self.active -= 1
                if self.active == 0:
                    self._idle.set()

        return call

    async def settled(self) -> None:
        """Return once no data-plane call is in flight here (new ones arrive only while it is current)."""
        while self.active:
            self._idle.clear()
            await self._idle.wait()


def fingerprint(config: DeploymentConfig) -> str:
    """Equal for two deployment configs that would build the same provider."""
    return json.dumps(config.model_dump(mode="json"), sort_keys=True)


def reusable(previous: ModelTable) -> Callable[[str, DeploymentConfig], Deployment | None]:
    """``(model, deployment config) -> the running Deployment built from that same config, or None``."""
    running = {(model, d.name, fingerprint(d.config)): d for model, group in previous.items() for d in group}

    def find(model: str, config: DeploymentConfig) -> Deployment | None:
        return running.get((model, config.name or "", fingerprint(config)))

    return find


async def start_or_close(deployments: list[Deployment]) -> None:
    """Start the providers a reload added; if one fails, close them all and refuse the config."""
    results = await asyncio.gather(*(d.provider.start() for d in deployments), return_exceptions=True)
    failed = [(d, r) for d, r in zip(deployments, results, strict=True) if isinstance(r, BaseException)]
    if failed:
        await asyncio.gather(*(d.provider.aclose() for d in deployments), return_exceptions=True)
        names = "; ".join(f"{d.name}: {error}" for d, error in failed)
        raise ConfigConflict(f"The new config's deployments could not start, so the old config keeps serving: "
                             f"{names}")


def restart_required(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """The sections that changed but apply only after a restart."""
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    return [name for name in RESTART_SECTIONS if before.get(name) != after.get(name)]


@dataclass(frozen=True, slots=True)
class Loaded:
    """One config that served, kept for rollback."""

    config: GatewayConfig
    digest: str
    at: float
    source: str  # "start", "reload", "rollback"

    def summary(self) -> dict[str, Any]:
        return {"config_hash": self.digest, "loaded_at": round(self.at, 3), "source": self.source,
                "models": [m.name for m in self.config.models]}


Build = Callable[[GatewayConfig, ModelTable], Awaitable[Serving]]
Swap = Callable[[Serving], Serving]


class Reloads:
    """Reload and rollback, one at a time, with the last ``keep`` configs that served."""

    def __init__(self, path: Path | None, models_now: Callable[[], ModelTable], build: Build, swap: Swap,
                 retire_deployment: Callable[[Deployment], Awaitable[None]], log: JsonLog, keep: int = 5) -> None:
        self._path = path
        self._models_now = models_now  # the table serving now: its unchanged deployments are reused
        self._build = build
        self._swap = swap
        self._log = log
        self._retire_deployment = retire_deployment
        self._lock = asyncio.Lock()
        self.history: deque[Loaded] = deque(maxlen=max(2, keep))
        self._retiring: set[asyncio.Task[None]] = set()

    def started(self, config: GatewayConfig) -> None:
        self.history.append(Loaded(config, config.digest(), time.time(), "start"))

    async def reload(self, trigger: str) -> dict[str, Any]:
        """Read the config file again and apply it; ``ConfigError`` (with the line) leaves the old one serving."""
        if self._path is None:
            raise ConfigConflict("This gateway started without a config file (the embedded default), so there is "
                                 "nothing to reload: start it with --config or TOKENWAY_CONFIG.")
        async with self._lock:
            try:
                config = await asyncio.to_thread(load_config, self._path)
                return await self._apply(config, trigger, "reload", self.history[-1])
            except (ConfigError, GatewayError) as exc:
                self._log.event("config_refused", level="error", trigger=trigger, error=str(exc),
                                config_hash=self.history[-1].digest)
                raise

    async def reload_in_background(self, trigger: str) -> None:
        """``reload`` for a trigger nobody waits on (a signal, a file change): every outcome is only logged."""
        try:
            await self.reload(trigger)
        except (ConfigError, GatewayError):
            pass  # logged as config_refused with its line; the old config keeps serving
        except Exception as exc:  # a bug in building the new path must not take the process down
            self._log.event("config_reload_failed", level="error", trigger=trigger, error=repr(exc))

    async def reload_if_changed(self, trigger: str) -> None:
        """``reload_in_background`` if the file no longer holds the config serving now (or is bad)."""
        if self._path is None:
            return
        try:
            config = await asyncio.to_thread(load_config, self._path)
        except ConfigError:
            config = None  # the reload says why, with the line
        if config is None or config.digest() != self.history[-1].digest:
            await self.reload_in_background(trigger)

    async def rollback(self) -> dict[str, Any]:
        """Serve the config before the current one again (the current one is dropped from the history)."""
        async with self._lock:
            if len(self.history) < 2:
                raise ConfigConflict("No earlier config to roll back to: this one is the oldest kept.")
            current, target = self.history.pop(), self.history.pop()
            try:
                return await self._apply(target.config, "admin", "rollback", current)
            except BaseException:
                self.history.extend([target, current])
                raise

    async def _apply(self, config: GatewayConfig, trigger: str, source: str, current: Loaded) -> dict[str, Any]:
        started = time.perf_counter()
        serving = await self._build(config, self._models_now())
        old = self._swap(serving)
        self.history.append(Loaded(config, serving.digest, time.time(), source))
        before, after = {id(d) for d in old.models.all()}, {id(d) for d in serving.models.all()}
        removed = [d for d in old.models.all() if id(d) not in after]
        task = asyncio.get_running_loop().create_task(self._retire(old, removed))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        pending = restart_required(current.config, config)
        outcome: dict[str, Any] = {
            "config_hash": serving.digest, "previous_hash": current.digest, "source": source,
            "deployments": {"kept": len(after & before), "started": len(after - before), "retiring": len(removed)},
            "restart_required": pending,
            "seconds": round(time.perf_counter() - started, 3),
        }
        self._log.event("config_applied", trigger=trigger, **outcome)
        return outcome

    async def _retire(self, old: Serving, removed: list[Deployment]) -> None:
        await old.discovery.aclose()  # no more workers join the old table
        await old.settled()
        if old.context is not None:
            await old.context.aclose()
        loop = asyncio.get_running_loop()
        for deployment in removed:
            # Jobs call the handler directly, not through a data route: their calls show only here.
            deadline = loop.time() + deployment.config.timeouts.total
            while deployment.in_flight > 0 and loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(_IN_FLIGHT_POLL_S)
            await self._retire_deployment(deployment)
        if removed:
            self._log.event("deployments_retired", deployments=[d.name for d in removed])

    async def aclose(self) -> None:
        for task in self._retiring:
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)

    def snapshot(self) -> dict[str, Any]:
        return {"current": self.history[-1].summary() if self.history else None,
                "history": [loaded.summary() for loaded in reversed(self.history)],
                "path": str(self._path) if self._path else None}


def install_reload_on_sighup(reloads: Reloads) -> None:
    """SIGHUP reloads the config file in this process; a bad file is logged and the old config stays."""
    if threading.current_thread() is not threading.main_thread():
        return  # a server in a test thread: no signals there
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[None]] = set()

    def on_sighup() -> None:
        task = loop.create_task(reloads.reload_in_background("SIGHUP"))
        running.add(task)
        task.add_done_callback(running.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)


async def reload_when_file_changes(path: Path, reloads: Reloads, interval: float) -> None:
    """Reload whenever the file's bytes change (an edit, a ConfigMap update the kubelet wrote).

    Every worker of ``serve --workers N`` and every replica of a fleet runs this on its own file, so
    one change reaches them all with no signal to deliver. A file that stays bad is refused once.
    """
    seen = await asyncio.to_thread(_read_digest, path)
    await reloads.reload_if_changed("file change")  # an edit between the config's load at start-up and now
    while True:
        await asyncio.sleep(interval)
        now = await asyncio.to_thread(_read_digest, path)
        if now != seen:
            seen = now
            await reloads.reload_in_background("file change")


def _read_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:  # mid-swap (a ConfigMap's symlink flip) or removed: the next look decides
        return None


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def config_router(reloads: Reloads, master_key: str | None) -> APIRouter:
    """``POST /admin/config/reload``, ``POST /admin/config/rollback`` and ``GET /admin/config``."""
    router = APIRouter(prefix="/admin/config", tags=["admin"],
                       dependencies=[Depends(require_master_key(master_key))])

    @router.get("", summary="The config serving now and the earlier ones kept for rollback")
    async def current() -> dict[str, Any]:
        return reloads.snapshot()

    @router.post("/reload", summary="Read the config file again and apply it; a bad one is refused with its line",
                 responses={409: _error("No config file to reload, or the new deployments could not start.")})
    async def reload() -> dict[str, Any]:
        try:
            return await reloads.reload("admin")
        except ConfigError as exc:
            raise InvalidRequest(f"The config was refused and the old one keeps serving: {exc}",
                                 code="invalid_config") from None

    @router.post("/rollback", summary="Serve the config before the current one again",
                 responses={409: _error("No earlier config kept, or its deployments could not start.")})
    async def rollback() -> dict[str, Any]:
        return await reloads.rollback()

    return router

