"""The live side of the config: each deployment with its provider, load and health signals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tokenway.config import DeploymentConfig
from tokenway.errors import ModelNotFound
from tokenway.providers.base import Provider
from tokenway.routing.breaker import CircuitBreaker
from tokenway.routing.options import BreakerConfig
from tokenway.usage.cost import Rates, deployment_price

_EWMA_ALPHA = 0.3  # weight of the newest sample: reacts within a few calls, smooths one-off spikes


@dataclass(slots=True)
class EngineLoad:
    """One scrape of a vLLM/SGLang worker's ``/metrics``, plus our in-flight count at that moment."""

    waiting: float
    running: float
    kv_usage: float  # 0..1
    at: float  # time.monotonic() of the scrape
    in_flight_at_scrape: int


@dataclass(eq=False, slots=True)
class Deployment:
    """One deployment of a model and its live state. Each field of that state has one writer, named
    beside it; everything else only reads it."""

    config: DeploymentConfig
    provider: Provider
    # policies/admission.py (LimitConcurrency), through acquire and release:
    in_flight: int = 0
    # policies/routing.py (Route), at start-up and per attempt:
    breaker: CircuitBreaker = field(default_factory=lambda: CircuitBreaker(BreakerConfig()))
    on_release: Callable[[float], None] | None = None  # (seconds the slot was held): wakes the model's queue
    cooldown_until: float = 0.0  # routing clock time (Clock.now()) before which its Retry-After asks us to stay away
    picks: int = 0
    # policies/routing.py for failures before the answer, routing/observe.py for failures mid-stream:
    failures: int = 0
    # routing/observe.py and policies/routing.py, through observe_ttft:
    ttft_ewma: float | None = None  # seconds to the first byte (whole answer when not streaming)
    # routing/health.py (active health checks):
    healthy: bool = True  # the active health check's verdict; True when none is configured
    # routing/engine_metrics.py (scrapes of a vLLM/SGLang worker's /metrics):
    engine: EngineLoad | None = None  # None: no scrape configured, or the last one failed
    rates: Rates = field(init=False)  # its price (configured or listed), as integers: budgets and the ledger use it

    def __post_init__(self) -> None:
        self.rates = Rates.of(deployment_price(self.config))

    @property
    def name(self) -> str:
        return self.config.name or ""

    @property
    def full(self) -> bool:
        limit = self.config.max_concurrency
        return limit is not None and self.in_flight >= limit

    def acquire(self) -> None:
        self.in_flight += 1

    def release(self, held: float) -> None:
        self.in_flight -= 1
        if self.on_release is not None:
            self.on_release(held)

    def observe_ttft(self, seconds: float) -> None:
        previous = self.ttft_ewma
        self.ttft_ewma = seconds if previous is None else previous + _EWMA_ALPHA * (seconds - previous)

    def load(self) -> float:
        """Work ahead of a new call here: the engine's own view when scraped, else our in-flight.

        The scrape is up to one interval old; calls we sent since then are added on top, so a
        burst between two scrapes does not all land on the same "idle" worker.
        """
        engine = self.engine
        if engine is None:
            return float(self.in_flight)
        fresh = max(0, self.in_flight - engine.in_flight_at_scrape)
        load = engine.running + 2.0 * engine.waiting + fresh  # a waiting request costs a full queue slot
        if engine.kv_usage > 0.9:  # near-full KV cache: new work preempts or queues
            load += 10.0 * (engine.kv_usage - 0.9) * max(1.0, engine.running)
        return max(load, float(self.in_flight))

    def snapshot(self) -> dict[str, object]:
        engine = self.engine
        return {
            "name": self.name,
            "in_flight": self.in_flight,
            "max_concurrency": self.config.max_concurrency,
            "healthy": self.healthy,
            "breaker": self.breaker.snapshot(),
            "ttft_ewma_ms": None if self.ttft_ewma is None else round(self.ttft_ewma * 1000, 3),
            "engine": None if engine is None else {
                "waiting": engine.waiting, "running": engine.running, "kv_usage": engine.kv_usage,
            },
            "load": round(self.load(), 3),
            "picks": self.picks,
            "failures": self.failures,
        }


class ModelTable:
    """Public model name -> its deployments now.

    The models are fixed at start; a model's deployments may change while requests run, as
    discovered workers join and leave (``routing/discovery.py``). A change never edits a sequence
    that a reader may hold: it puts a new tuple in the model's place, so a request keeps the
    consistent view it looked up, and the request path reads without locks (one event loop; the
    tuple swap is a single store).
    """

    def __init__(self, models: dict[str, list[Deployment]]) -> None:
        self._models: dict[str, tuple[Deployment, ...]] = {name: tuple(group) for name, group in models.items()}

    def lookup(self, name: str) -> tuple[Deployment, ...]:
        try:
            return self._models[name]
        except KeyError:
            known = ", ".join(sorted(self._models)) or "(none configured)"
            raise ModelNotFound(
                f"The model '{name}' does not exist on this gateway. Known models: {known}.", param="model"
            ) from None

    def names(self) -> list[str]:
        return list(self._models)

    def all(self) -> list[Deployment]:
        return [d for deployments in self._models.values() for d in deployments]

    def items(self) -> list[tuple[str, tuple[Deployment, ...]]]:
        return list(self._models.items())

    def add(self, name: str, deployment: Deployment) -> None:
        """``deployment`` takes calls for model ``name`` from now on."""
        self._models[name] = (*self.lookup(name), deployment)

    def remove(self, name: str, deployment: Deployment) -> None:
        """No new call goes to ``deployment``; calls that already have it finish there."""
        self._models[name] = tuple(d for d in self.lookup(name) if d is not deployment)
