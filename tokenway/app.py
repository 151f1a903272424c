"""``create_app(settings, config)``: the gateway as one ASGI app, and the policy list.

The app owns everything with a lifetime (HTTP client pool, providers, log flusher) through the
ASGI lifespan. Providers start in the background after the server is up, so ``/ready`` can
say "not yet" while a local model loads; the data plane answers 503 until then.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from functools import partial
from typing import Any

import aiohttp

from tokenway import __version__
from tokenway.access import Access
from tokenway.api.admin import admin_router
from tokenway.api.admin_overview import overview_router
from tokenway.api.admin_prompts import prompts_router
from tokenway.api.admin_requests import requests_router
from tokenway.api.admin_routing import routing_router
from tokenway.api.admin_status import status_router
from tokenway.api.batches import batches_router
from tokenway.api.callers import Callers
from tokenway.api.client_address import TrustedProxies
from tokenway.api.control import control_app
from tokenway.api.guards import require_metrics_token
from tokenway.api.jobs import jobs_router
from tokenway.api.messages import CountTokens, MessagesWire
from tokenway.api.models import models_router
from tokenway.api.openai import DataPlane, Endpoint
from tokenway.api.responses import ResponsesWire, responses_router
from tokenway.api.wire import OpenAIWire
from tokenway.asgi import Receive, Scope, Send, send_error
from tokenway.clock import SYSTEM_CLOCK, Clock
from tokenway.config import DeploymentConfig, GatewayConfig, Settings, load_config
from tokenway.console.ended import open_ended_sessions, without_ended_sessions
from tokenway.console.login_limit import open_login_attempts
from tokenway.console.playground import playground_chat
from tokenway.console.routes import console_router
from tokenway.context import RequestContext
from tokenway.deployments import Deployment, ModelTable
from tokenway.drain import drain_when_file_appears, install_drain_on_sigterm
from tokenway.embeddings.schema import read_embeddings
from tokenway.errors import GatewayError, MethodNotAllowed
from tokenway.guards.policy import Guards, open_guards
from tokenway.jobs.runtime import Jobs
from tokenway.observability.live_state import LiveState
from tokenway.observability.logging import JsonLog
from tokenway.observability.metrics import Metrics
from tokenway.observability.tracing import Tracing
from tokenway.policies.admission import LimitConcurrency
from tokenway.policies.base import Handler, Policy, compose
from tokenway.policies.cache import ResponseCache, open_cache
from tokenway.policies.context_window import ContextWindow
from tokenway.policies.resilience import Resilience
from tokenway.policies.routing import Route
from tokenway.policies.structured_output import StructuredOutput
from tokenway.prompts.policy import ApplyPrompt
from tokenway.prompts.service import Prompts
from tokenway.prompts.store import open_prompt_store
from tokenway.providers.base import Answer, Call, Completion, ProviderResources, not_served
from tokenway.providers.registry import provider_class
from tokenway.providers.upstream import HttpClient
from tokenway.releases.admin import releases_router
from tokenway.releases.policy import ReleaseSplit
from tokenway.releases.record import ReleaseRecord
from tokenway.reload import (
    ConfigConflict,
    Reloads,
    Serving,
    config_router,
    install_reload_on_sighup,
    reload_when_file_changes,
    reusable,
    start_or_close,
)
from tokenway.replay.recorder import Recorder
from tokenway.replay.store import open_record_store
from tokenway.routing.discovery import Discovery
from tokenway.routing.health import Monitors
from tokenway.routing.stats import RoutingStats
from tokenway.tiers.policy import TierRouting, open_tiers
from tokenway.translate.responses_store import open_store


def upstream_caller(metrics: Metrics) -> Handler:
    """The end of the policy list: hand the call to the deployment routing chose (one attempt)."""

    async def call_provider(ctx: RequestContext, call: Call) -> Answer:
        deployment = ctx.target
        assert deployment is not None, "routing sets the target before the provider call"
        if ctx.deadline is None:
            ctx.deadline = ctx.started + deployment.config.timeouts.total
        provider = deployment.provider
        serve = getattr(provider, call.kind, None)  # chat, completions or embeddings
        if serve is None:  # a backend without this kind (embeddings from a chat-only model)
            raise not_served(call, deployment.name)
        ctx.upstream_started = time.perf_counter()
        try:
            answer = await serve(call, ctx)
        except GatewayError as error:
            metrics.upstream_attempt_failed(deployment.name, error)
            raise
        if isinstance(answer, Completion):
            ctx.upstream_done = time.perf_counter()
        return answer

    return call_provider


class Gateway:
    """The ASGI application."""

    def __init__(
        self, settings: Settings, config: GatewayConfig, log: JsonLog | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.settings = settings
        self.config = config
        self.clock = clock  # what the policies that keep time (retries, breakers, queues) read and sleep on
        self.log = log or JsonLog(
            sample=config.logging.sample, requests=config.logging.requests, content=config.logging.content,
            level=settings.log_level,
        )
        self.metrics = Metrics()
        self.tracing: Tracing | None = None
        self.ready = False
        self.draining = False
        self.routing = RoutingStats()  # routing decisions by reason (GET /admin/routing)
        self._monitors: Monitors | None = None
        self._http: aiohttp.ClientSession | None = None
        self._upstream: HttpClient | None = None
        self.redis: Any = None  # redis.asyncio.Redis when TOKENWAY_REDIS_URL is set; shared by every store
        self.cache: ResponseCache | None = None  # None when caching is off for every model
        self.guards: Guards | None = None  # None when no guard profile is configured
        self.tiers: TierRouting | None = None  # None when no router is configured (config.tiers)
        self._models = ModelTable({})
        self.route: Route | None = None
        self._serving: Serving | None = None  # the request path of the config serving now (tokenway/reload.py)
        self._resources: ProviderResources | None = None
        self.reloads = Reloads(settings.config, lambda: self._models, self.serve, self._swap, self._retire,
                               self.log, settings.config_history)
        self._starting: asyncio.Task[None] | None = None
        self._drain_watch: asyncio.Task[None] | None = None  # waits for the drain file (settings.drain_file)
        self._config_watch: asyncio.Task[None] | None = None  # reloads on a config file change (config_watch_s)
        self._data_routes: dict[str, Any] = {}
        self._control: Any = None
        self.access = Access(settings, config, self.log)  # keys, limits, budgets, ledger (started in startup)
        self.jobs = Jobs(settings, config, self.log, self.metrics)  # async jobs and batches (started in startup)
        self.releases = ReleaseRecord()  # what each release version and its shadow did (GET /admin/releases)
        self._routers = [router.name for router in config.tiers]  # public names that route to tiers
        self.prompts = Prompts(open_prompt_store(settings), self.log, config.prompts.refresh_s)  # prompt versions
        # None unless the config's record: section names a model or a key
        self.recorder = (Recorder(config.record, open_record_store(settings), self.log)
                         if config.record.enabled else None)

    def policies(self, models: ModelTable, config: GatewayConfig) -> list[Policy]:
        """The request path for ``config``, top to bottom. Adding a policy is adding a module and a line here.
        Read ``config``, not ``self.config``: a reload builds the new list while the old config still serves."""
        route = Route(models, config, self.routing, self.clock, previous=self.route)
        context = ContextWindow(config, models, self.log, self.metrics) if ContextWindow.wanted(config) else None
        return [
            self.access.policy,  # keys -> rate limits + budget hold (one atomic step) -> settle + ledger at the end
            *([self.recorder.front] if self.recorder is not None else []),  # chosen requests recorded, as sent
            ApplyPrompt(self.prompts, config, self.metrics),  # a prompt's messages; before guards and cache
            # a router's public name becomes its tier's model: everything below acts as for that model
            *([self.tiers] if self.tiers is not None else []),
            # PII, injection, blocked terms, output length; before the cache, so every caller's guards apply to hits
            *([self.guards] if self.guards is not None else []),
            *([self.cache] if self.cache is not None else []),
            # a released model's caller goes to their version (sticky), a share copied to a shadow candidate
            *([ReleaseSplit(config, self.releases)] if ReleaseSplit.wanted(config) else []),
            # replies checked against response_format / tools and retried; after the cache, so it stores only valid ones
            *([StructuredOutput(config, self.metrics, self.access.policy.hold_more)]
              if StructuredOutput.wanted(config) else []),
            Resilience(models, config, self.routing, self.clock),  # retries, fallbacks within the allow-list
            # conversations too long for the window of the model tried: reject, trim or summarise
            *([context] if context is not None else []),
            route,  # picks ctx.target, the deployment of this attempt
            LimitConcurrency(self.clock),
            *([self.recorder.attempts] if self.recorder is not None else []),  # each deployment call, for the record
        ]

    def public_names(self, models: ModelTable) -> list[str]:
        """What clients may ask for: the models of ``models``, and the tier routers in front of them."""
        return [*models.names(), *self._routers]

    @property
    def models(self) -> ModelTable:
        """Every model's deployments, with their providers (empty until start-up)."""
        return self._models

    def _state(self) -> dict[str, bool]:
        return {"ready": self.is_ready(), "draining": self.draining}

    def is_ready(self) -> bool:
        return self.ready and not self.draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self._data_routes.get(scope["path"])
            if endpoint is not None:
                if scope["method"] != "POST":
                    await send_error(send, MethodNotAllowed(f"Use POST for {scope['path']}."), [(b"allow", b"POST")])
                    return
                await endpoint(scope, receive, send)
                return
            await self._control(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            await self.startup()
        except Exception as exc:
            await self.log.aclose()  # the log took over stdlib logging when it started: give it back
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        await self.shutdown()
        await send({"type": "lifespan.shutdown.complete"})

    async def startup(self) -> None:
        if self.settings.gc_threshold:
            # The request path makes many short-lived objects; at Python's default (a young-generation
            # collection every 700 allocations) the collector ran every few requests and cost ~30% of
            # throughput. Freeze what start-up built so collections never scan it, and collect less often.
            gc.freeze()
            gc.set_threshold(self.settings.gc_threshold, 20, 20)
        self.log.start()
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
        # No cookie jar: a backend's cookies must never leak from one tenant's call into another's
        # (and the jar's per-request bookkeeping is pure overhead for an API gateway).
        self._http = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        if self.settings.redis_url:
            import redis.asyncio

            self.redis = redis.asyncio.from_url(self.settings.redis_url)
        self.cache = await open_cache(self.config, self.redis)
        self.guards = await open_guards(self.config, self.metrics, self.log)
        self.tiers = await open_tiers(self.config, self.metrics, self.log, self.access.policy.hold_more)
        self._upstream = HttpClient()
        self._resources = ProviderResources(http=self._http, upstream=self._upstream, data_dir=self.settings.data_dir)
        await self.access.start()
        if self.config.observability.tracing.enabled:
            self.tracing = Tracing(self.config.observability.tracing)
        self._stored_responses = open_store(self.config.responses, self.redis)  # previous_response_id, GET, DELETE
        self._ended_sessions = open_ended_sessions(self.redis, self.config.access.redis_prefix)  # console logouts
        self._login_attempts = open_login_attempts(self.redis, self.config.access.redis_prefix)
        self._callers = Callers(self.access.policy, self.config.limits, lambda: self.public_names(self._models))
        await self.prompts.start()
        if self.recorder is not None:
            await self.recorder.start()
        self._monitors = Monitors(self._http)
        self._swap(await self.serve(self.config, self._models))
        self.reloads.started(self.config)
        self.metrics.add_collector(self.releases)
        self.metrics.add_collector(LiveState(lambda: self._models, self.routing, self._queue_lengths,
                                             self.access.store_failures))
        metrics = self.metrics if self.config.observability.metrics else None
        await self.jobs.start(self._handle, self.clock, self.is_ready, metrics)  # jobs re-enter the same policy list
        self.jobs.service.validator = self._callers.validator
        self._starting = asyncio.get_running_loop().create_task(self._start_providers())
        install_reload_on_sighup(self.reloads)
        if self.settings.config is not None and self.settings.config_watch_s > 0:
            self._config_watch = asyncio.get_running_loop().create_task(
                reload_when_file_changes(self.settings.config, self.reloads, self.settings.config_watch_s))
        install_drain_on_sigterm(self.begin_drain, self.settings.drain_delay_s)
        if self.settings.drain_file is not None:
            self._drain_watch = asyncio.get_running_loop().create_task(
                drain_when_file_appears(self.settings.drain_file, self.begin_drain))
        open_note = "" if self.settings.master_key else " (no master key: anyone who can reach it may call it)"
        self.log.event(
            "starting", version=__version__, pid=os.getpid(), models=self._models.names(),
            config_hash=self.config.digest(), auth="master key" if self.settings.master_key else "open" + open_note,
        )

    async def serve(self, config: GatewayConfig, previous: ModelTable) -> Serving:
        """The request path for ``config``: the deployments of ``previous`` whose config is unchanged are
        reused (provider, breaker, latency and health state); new ones are started here once the gateway is
        serving."""
        assert self._resources is not None and self._monitors is not None and self._http is not None
        resources, running = self._resources, reusable(previous)

        def build(d: DeploymentConfig) -> Deployment:
            return Deployment(d, provider_class(d.provider)(d, d.options, resources))

        # Entries with a discovery block are templates: their workers join once found (routing/discovery.py).
        models = ModelTable({
            model.name: [running(model.name, d) or build(d) for d in model.deployments if d.discovery is None]
            for model in config.models
        })
        running_before = set(previous.all())
        new = [d for d in models.all() if d not in running_before]
        if self._serving is not None:  # a reload (at start-up _start_providers starts them in the background)
            if self._starting is not None and not self._starting.done():
                raise ConfigConflict("The gateway is still starting its deployments; reload once /ready says so.")
            await start_or_close(new)
        policies, upstream = self.policies(models, config), upstream_caller(self.metrics)
        route = next(p for p in policies if isinstance(p, Route))
        context = next((p for p in policies if isinstance(p, ContextWindow)), None)
        if self.tracing is not None:
            policies, upstream = [self.tracing.wrap(p) for p in policies], self.tracing.wrap_upstream(upstream)
        handler = compose(policies, upstream)
        if context is not None:
            context.bind(handler)  # summaries are asked of a model through the same policy list
            if self._serving is not None:  # a reload: its deployments have started (at start-up, once they have)
                await context.learn()
        metrics = self.metrics if config.observability.metrics else None
        plane = DataPlane(config, handler, self.log, metrics, self.is_ready, self.tracing,
                          TrustedProxies.of(self.settings.trusted_proxies),
                          identify=lambda ctx: self.access.policy.authenticate(ctx, None))
        stored_responses, callers = self._stored_responses, self._callers
        names = partial(self.public_names, models)
        data_routes: dict[str, Endpoint] = {
            **plane.routes({"/v1/messages": MessagesWire(),
                            "/v1/responses": ResponsesWire(
                                stored_responses, config.limits,
                                native=[model.name for model in config.models if model.native_responses]),
                            "/v1/embeddings": OpenAIWire("embeddings", read_embeddings)}),
            # no backend call, no policies: the key check and the gateway's estimate
            "/v1/messages/count_tokens": CountTokens(
                self.access.policy.authenticate, names, config.limits, self.log),
        }
        # the console's playground: a session instead of a key, then the same chat endpoint
        data_routes["/ui/playground/chat/completions"] = without_ended_sessions(playground_chat(
            data_routes["/v1/chat/completions"], self.settings.master_key), self._ended_sessions)
        metrics_auth = (require_metrics_token(self.settings.metrics_token, self.settings.master_key)
                        if self.settings.metrics_token else None)
        discovery = Discovery(config, route, build, self._monitors, self._http, self.log)
        control = control_app(self.is_ready, metrics, metrics_auth=metrics_auth,
                              keyed=self.settings.master_key is not None,
                              routers=[models_router(names, callers, int(time.time())),
                                       routing_router(models, self.routing, self.settings.master_key,
                                                      discovery.snapshot),
                                       status_router(config, models, self.routing,
                                                     route.queue_lengths, self._state, self.request_drain,
                                                     self.settings.master_key),
                                       admin_router(self.access, self.settings.master_key,
                                                    config.guards.profiles),
                                       config_router(self.reloads, self.settings.master_key),
                                       releases_router(config, self.releases, self.settings.master_key),
                                       jobs_router(self.jobs.service, callers, self.settings.master_key),
                                       prompts_router(self.prompts, self.settings.master_key),
                                       *([requests_router(self.recorder, config.record.retention_s,
                                                          self.settings.master_key)] if self.recorder else []),
                                       batches_router(self.jobs.service, callers),
                                       responses_router(stored_responses, callers),
                                       overview_router(metrics, models, self.access, self.settings.master_key),
                                       console_router(self.settings.master_key,
                                                      TrustedProxies.of(self.settings.trusted_proxies),
                                                      self._ended_sessions, self._login_attempts)])
        for deployment in new:
            self._monitors.watch(deployment)
        discovery.start()
        return Serving(config, models, route, handler, data_routes,
                       without_ended_sessions(control, self._ended_sessions), discovery, context)

    def _swap(self, serving: Serving) -> Serving:
        """Make ``serving`` the request path for every call from now on; return the one it replaces. No await
        here: a call sees either the old path or the new one, whole."""
        old = self._serving or serving
        self._serving, self.config, self._models, self.route = serving, serving.config, serving.models, serving.route
        self._data_routes, self._control = serving.data_routes, serving.control
        # What is built once per process but reads the models: budgets held at the served models' prices,
        # each model's guard profiles and cache rules as the serving config says.
        models = serving.config.models
        self.access.policy.use_models(models)
        if self.guards is not None:
            self.guards.use_models({model.name: model.guards for model in models})
        if self.cache is not None:
            self.cache.use_models({model.name: model.cache for model in models})
        return old

    async def _handle(self, ctx: RequestContext, call: Call) -> Answer:
        """The policy list of the config serving now (jobs hold this, not one config's handler)."""
        assert self._serving is not None
        return await self._serving.handler(ctx, call)

    def _queue_lengths(self) -> dict[str, int]:
        return self.route.queue_lengths() if self.route is not None else {}

    async def _retire(self, deployment: Deployment) -> None:
        """A deployment a reload dropped, once its calls are done: stop its checks, close its provider."""
        assert self._monitors is not None
        await self._monitors.forget(deployment)
        await deployment.provider.aclose()

    async def _start_providers(self) -> None:
        started = time.perf_counter()
        deployments = self._models.all()
        results = await asyncio.gather(*(d.provider.start() for d in deployments), return_exceptions=True)
        failed = [(d, r) for d, r in zip(deployments, results, strict=True) if isinstance(r, BaseException)]
        for deployment, error in failed:
            self.log.event("deployment_failed", level="error", deployment=deployment.name, error=str(error))
        if failed and len(failed) == len(deployments):
            self.log.event("not_ready", level="error", reason="no deployment could start")
            return
        if self._serving is not None and self._serving.context is not None:
            await self._serving.context.learn()  # windows the config leaves to the workers (vLLM's max_model_len)
        self.ready = True
        self.log.event("ready", models=self._models.names(), seconds=round(time.perf_counter() - started, 3))

    def request_drain(self) -> bool:
        """``POST /admin/drain``: this process now, every other worker of the server through the drain file."""
        if self.settings.drain_file is not None:
            try:
                self.settings.drain_file.touch()
            except OSError as exc:  # this process drains all the same
                self.log.event("drain_file_failed", level="error", path=str(self.settings.drain_file), error=str(exc))
        return self.begin_drain()

    def begin_drain(self) -> bool:
        """Stop taking new work (``/ready`` → 503); in-flight calls go on. False if already draining."""
        if self.draining:
            return False
        self.draining = True
        self.log.event("draining", pid=os.getpid(), delay_s=self.settings.drain_delay_s)
        return True

    async def shutdown(self) -> None:
        self.ready = False
        for watch in (self._drain_watch, self._config_watch):
            if watch is not None:
                watch.cancel()
        await self.reloads.aclose()
        if self._serving is not None:
            await self._serving.discovery.aclose()
        if self._monitors is not None:
            await self._monitors.aclose()
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        await self.releases.aclose()  # shadow copies still in flight: nobody waits for their answers
        await asyncio.gather(*(d.provider.aclose() for d in self._models.all()), return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        if self._upstream is not None:
            await self._upstream.aclose()
        await self.jobs.aclose()  # running jobs go back to the queue; their requests' ledger rows are written
        await self.access.aclose()  # flushes the usage ledger
        await self.prompts.aclose()
        if self.recorder is not None:
            await self.recorder.aclose()
        if self.cache is not None:
            await self.cache.aclose()
        if self._serving is not None and self._serving.context is not None:
            await self._serving.context.aclose()
        if self.tiers is not None:
            await self.tiers.aclose()
        if self.guards is not None:
            await self.guards.aclose()
        if self.tiers is not None:
            await self.tiers.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        self.metrics.close()
        if self.tracing is not None:
            self.tracing.shutdown()
        self.log.event("stopped")
        await self.log.aclose()


def create_app(
    settings: Settings | None = None, config: GatewayConfig | None = None, clock: Clock = SYSTEM_CLOCK
) -> Gateway:
    settings = settings or Settings()
    return Gateway(settings, config if config is not None else load_config(settings.config), clock=clock)
