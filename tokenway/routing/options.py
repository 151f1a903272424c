"""The YAML fields for routing and resilience, per model and per deployment (validated at start).

Kept apart from ``config.py`` so the routing package owns its knobs; ``config.py`` only hangs
them on ``ModelConfig`` and ``DeploymentConfig``. Seconds everywhere.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Share = Annotated[float, Field(ge=0, le=1)]

Strategy = Literal["round_robin", "least_in_flight", "latency", "engine", "prefix"]
RetryOn = Literal["connect", "timeout", "429", "5xx", "overloaded"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetryConfig(_Strict):
    """Retries of one call, across the deployments of a model, before the first byte only."""

    attempts: Annotated[int, Field(ge=1, le=10)] = 3  # tries per model, the first one included
    on: list[RetryOn] = ["connect", "timeout", "429", "5xx", "overloaded"]
    backoff_base: NonNegative = 0.05  # full jitter: sleep U(0, min(max, base * 2**n))
    backoff_max: NonNegative = 2.0
    # A Retry-After up to this long is waited out (bounded by the deadline); a longer one ends
    # the retries and is relayed to the client, who is better placed to wait.
    max_retry_after: NonNegative = 5.0
    # Retry budget (Finagle/Envoy style): retries may add at most this share of the model's
    # traffic, plus ``budget_min_per_s`` so that a quiet model can still retry at all.
    budget_ratio: Share = 0.2
    budget_min_per_s: NonNegative = 5.0
    # A stream whose first block fails within this window (reset, empty stream) is retried
    # like a failed call; past it, the stream goes to the client as it is.
    stream_probe: NonNegative = 0.25


class BreakerConfig(_Strict):
    """Per deployment: open on an error rate over a window, or on consecutive failures."""

    window: Positive = 10.0
    min_calls: Annotated[int, Field(ge=1)] = 10  # no rate verdict on fewer calls than this
    error_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    consecutive_failures: Annotated[int, Field(ge=1)] = 5
    cooldown: Positive = 5.0  # open for this long, then half-open
    half_open_probes: Annotated[int, Field(ge=1)] = 1  # calls let through while half-open


class DegradationConfig(_Strict):
    """When nothing can answer: a canned reply (marked as such), else 503 with Retry-After."""

    reply: str | None = None
    retry_after: Positive = 5.0


class QueueConfig(_Strict):
    """Admission: calls wait here when every deployment is at ``max_concurrency``."""

    size: Annotated[int, Field(ge=0)] = 0  # 0: no queue, shed at once
    max_wait: Positive = 30.0  # never wait longer than this (nor past the request's deadline)


class RoutingConfig(_Strict):
    strategy: Strategy = "round_robin"
    # prefix: characters of the prompt that identify a shared prefix (system prompt, documents)
    prefix_chars: Annotated[int, Field(ge=16)] = 2048
    # prefix: leave the affine worker when its load exceeds the least loaded one's by this much
    # (load = waiting + running + gateway in-flight, KV use weighted in; see balancers.py).
    affinity_slack: NonNegative = 8.0


class HealthCheckConfig(_Strict):
    """Active checks: GET ``path`` every ``interval``; any answer below 500 (except 404) is healthy.

    ``path`` is relative to ``api_base`` (``models`` → ``<api_base>/models``), or to its host
    when it starts with ``/`` (``/health`` for vLLM/SGLang).
    """

    path: str = "models"
    interval: Positive = 5.0
    timeout: Positive = 2.0
    unhealthy_after: Annotated[int, Field(ge=1)] = 2
    healthy_after: Annotated[int, Field(ge=1)] = 1


class EngineConfig(_Strict):
    """Scrape an inference engine's Prometheus ``/metrics`` for its queue and KV-cache use."""

    kind: Literal["vllm", "sglang"] = "vllm"
    metrics_url: str | None = None  # default: ``/metrics`` on the host of ``api_base``
    interval: Positive = 0.1


class KubernetesDiscovery(_Strict):
    """The ready endpoints of a Service, watched through the EndpointSlice API with the pod's
    service-account credentials (it needs ``get``, ``list`` and ``watch`` on ``endpointslices``)."""

    service: Annotated[str, Field(min_length=1)]
    namespace: str | None = None  # default: the pod's own (the service account's namespace file)


class DiscoveryConfig(_Strict):
    """Workers found rather than listed: each address the source finds becomes a deployment with the
    entry's other fields and ``api_base`` ``{scheme}://{address}:{port}{path}``, once its ``/models``
    lists the entry's ``model``. Exactly one source: ``dns`` or ``kubernetes``.

    ``dns``: a name whose A/AAAA records are the workers (a Kubernetes headless Service), resolved
    again every ``interval_s``. ``kubernetes``: a Service's EndpointSlices, watched (changes arrive
    at once; ``interval_s`` is how often a worker whose ``/models`` did not answer is asked again).
    """

    dns: Annotated[str, Field(min_length=1)] | None = None
    kubernetes: KubernetesDiscovery | None = None
    # dns: required. kubernetes: a port number, or the name of the Service's port; default its only port.
    port: Annotated[int, Field(ge=1, le=65535)] | str | None = None
    interval_s: Positive = 10.0
    scheme: Literal["http", "https"] = "http"
    path: str = "/v1"  # the OpenAI-compatible API's path on each worker
    nameserver: str | None = None  # dns: "host" or "host:port" instead of the system's resolver

    @model_validator(mode="after")
    def _one_source(self) -> DiscoveryConfig:
        if (self.dns is None) == (self.kubernetes is None):
            raise ValueError("give exactly one source: 'dns: <name>' or 'kubernetes: {service: <name>}'")
        if self.dns is not None and not isinstance(self.port, int):
            raise ValueError("dns discovery needs the workers' port as a number, e.g. 'port: 8000'")
        if self.nameserver is not None and self.dns is None:
            raise ValueError("'nameserver' goes with 'dns' discovery")
        self.nameserver_address()
        return self

    def nameserver_address(self) -> tuple[str, int] | None:
        """``nameserver`` as (IP, port): "10.0.0.10", "127.0.0.1:8600", "[fd00::10]:53" or "fd00::10"."""
        text = self.nameserver
        if text is None:
            return None
        host, port = text, "53"
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else port
        elif text.count(":") == 1:
            host, port = text.split(":")
        try:
            ip_address(host)
            number = int(port)
        except ValueError:
            raise ValueError(
                f"nameserver {text!r}: give an IP address, optionally with a port (127.0.0.1:8600)"
            ) from None
        return host, number
