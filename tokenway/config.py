"""Settings (flags and ``TOKENWAY_*`` env vars) and the YAML config, validated once at start.

Errors in the YAML point at the file and line of the offending value:
``tokenway.yaml:7: models[0].deployments[0].timeouts.total: Input should be greater than 0``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tokenway.cache.options import CacheConfig, ModelCacheConfig
from tokenway.guards.options import GuardsConfig
from tokenway.jobs.options import JobsConfig
from tokenway.prompts.options import PromptPin, PromptsConfig
from tokenway.providers.base import ProviderOptions
from tokenway.providers.registry import UnknownProvider, provider_class
from tokenway.releases.options import ReleaseConfig
from tokenway.replay.options import RecordConfig
from tokenway.routing.options import (
    BreakerConfig,
    DegradationConfig,
    DiscoveryConfig,
    EngineConfig,
    HealthCheckConfig,
    QueueConfig,
    RetryConfig,
    RoutingConfig,
)
from tokenway.shaping.options import ContextConfig
from tokenway.tiers.options import TierRouterConfig
from tokenway.translate.responses_store import ResponsesConfig
from tokenway.usage.options import AccessConfig
from tokenway.validation.options import ModelStructuredOutputConfig, StructuredOutputConfig

Positive = Annotated[float, Field(gt=0)]


class Settings(BaseSettings):
    """Process settings: every field is a ``TOKENWAY_*`` env var; ``tokenway serve`` has flags for some.

    Built once at start (``load_settings``) and passed down to whatever needs them.
    """

    model_config = SettingsConfigDict(env_prefix="TOKENWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    config: Path | None = None
    master_key: str | None = None
    # Set, GET /metrics answers only this token (Prometheus' bearer token) or the master key: the metrics
    # name key aliases and teams. Unset, /metrics is open to whoever reaches the port (docs/security.md).
    metrics_token: str | None = None
    redis_url: str | None = None  # e.g. redis://127.0.0.1:6379/0: shared counters and cache across replicas
    database_url: str | None = None  # e.g. postgresql://127.0.0.1/test: keys and usage ledger across replicas
    data_dir: Path = Path("tokenway-data")  # embedded default: SQLite files and the usage write-ahead log
    gc_threshold: int = 20_000  # allocations between young-generation collections; 0 keeps Python's default
    allow_open: bool = False  # serve without auth on a non-loopback address
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    drain_delay_s: float = 3.0  # on SIGTERM: /ready false and new calls refused this long before listeners close
    shutdown_grace_s: float = 30.0  # then in-flight requests and streams get this long to finish
    # The drain starts when this file appears (tokenway/drain.py). `serve --workers N` sets one up so that
    # POST /admin/drain reaches every worker; a spot-notice watcher sharing the volume may create it too.
    drain_file: Path | None = None
    # Jobs on a fleet: the Celery broker (redis://... or amqp://...). Set, the gateway only queues jobs
    # and `tokenway worker` processes run them; unset, workers inside the gateway run them.
    jobs_broker_url: str | None = None
    files_dir: Path | None = None  # Batch API files; default <data_dir>/files (a shared volume for a fleet)
    config_history: int = 5  # configs kept for POST /admin/config/rollback (tokenway/reload.py)
    config_watch_s: float = 0.0  # > 0: reload when the config file changes, looked at this often (docs/reload.md)
    # Reverse proxies (nginx, a cloud load balancer) whose X-Forwarded-For / X-Real-IP name the client,
    # comma-separated addresses or CIDRs: "127.0.0.1,10.0.0.0/8". Empty: the socket's peer is the client
    # (tokenway/api/client_address.py). A process setting, not YAML: it says where this process runs.
    trusted_proxies: Annotated[list[IPvAnyNetwork], NoDecode] = []

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _shared_counters_for_workers(self) -> Settings:
        # Each worker process keeps its own embedded counters: N workers would allow N times every rate
        # limit and could overspend a budget N times. Shared counters need Redis.
        if self.workers > 1 and not self.redis_url:
            raise ValueError(
                f"{self.workers} workers need shared counters for rate limits and budgets: set "
                "TOKENWAY_REDIS_URL (e.g. redis://127.0.0.1:6379/0), or serve with one worker."
            )
        return self


class SettingsError(ValueError):
    """Settings that cannot be used; the message names the env var and what to do."""


def load_settings(**flags: Any) -> Settings:
    """``TOKENWAY_*`` env vars, with the flags the user passed on top (pass only those: a flag left at
    its default must not hide the env var)."""
    try:
        return Settings(**flags)
    except ValidationError as exc:
        raise SettingsError("\n".join(_settings_problem(error) for error in exc.errors(include_url=False))) from None


def _settings_problem(error: ErrorDetails) -> str:
    message = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
    if not error["loc"]:
        return message  # a rule across fields (workers and Redis): the message names what to set
    # Flags arrive already typed by argparse, so a value that fails here came from the environment.
    return f"TOKENWAY_{str(error['loc'][0]).upper()}: {message}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Timeouts(_Strict):
    """Seconds. ``first_token``: from sending the request to the first byte of the answer."""

    connect: Positive = 5.0
    first_token: Positive = 60.0
    idle: Positive = 30.0  # the longest silence allowed between two chunks of a stream
    total: Positive = 600.0


class Price(_Strict):
    """US dollars per 1M tokens."""

    input_per_1m: Annotated[float, Field(ge=0)] = 0.0
    output_per_1m: Annotated[float, Field(ge=0)] = 0.0


class DeploymentConfig(BaseModel):
    """One backend that serves a public model name. Provider-specific fields go to ``options``."""

    model_config = ConfigDict(extra="allow")

    provider: str = "openai"
    name: str | None = None  # shown in logs and metrics; default "<model>#<index>"
    api_base: str | None = None
    api_key_env: str | None = None  # name of the env var that holds the upstream key
    model: str | None = None  # upstream model name; default: the public name
    timeouts: Timeouts = Timeouts()
    max_concurrency: Annotated[int, Field(ge=1)] | None = None
    price: Price = Price()
    weight: Positive = 1.0
    headers: dict[str, str] = {}
    health_check: HealthCheckConfig | None = None  # active checks; off when absent
    engine_metrics: EngineConfig | None = None  # scrape a vLLM/SGLang worker's /metrics for engine-aware routing
    discovery: DiscoveryConfig | None = None  # find the workers (DNS, Kubernetes) instead of one api_base
    options: ProviderOptions = ProviderOptions()

    @model_validator(mode="after")
    def _found_or_listed(self) -> DeploymentConfig:
        if self.discovery is not None and self.api_base is not None:
            raise ValueError("with 'discovery', each worker's api_base comes from its address: remove 'api_base'")
        return self

    @model_validator(mode="after")
    def _provider_options(self) -> DeploymentConfig:
        try:
            cls = provider_class(self.provider)
        except UnknownProvider as exc:
            raise ValueError(str(exc)) from None
        extra = self.model_extra or {}
        try:
            self.options = cls.Options.model_validate(extra)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"{field}: {first['msg']} (for provider {self.provider!r})") from None
        extra.clear()
        return self

    @model_serializer(mode="wrap")
    def _options_inline(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        # Provider options are written back as the deployment's own fields, where a config file has them:
        # dumped as the ``options`` field they came out empty, so the digest missed them (a changed
        # keep_alive or model file kept the config hash) and a dumped config loaded back without them.
        out: dict[str, Any] = handler(self)
        out.pop("options", None)
        return {**out, **self.options.model_dump(mode=info.mode)}

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class ModelConfig(_Strict):
    name: Annotated[str, Field(min_length=1)]
    deployments: Annotated[list[DeploymentConfig], Field(min_length=1)]
    cache: ModelCacheConfig = ModelCacheConfig()
    routing: RoutingConfig = RoutingConfig()
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    queue: QueueConfig = QueueConfig()
    fallbacks: list[str] = []  # models tried in order when every deployment of this one failed
    context_fallbacks: list[str] = []  # tried instead when the prompt is too long for this model
    degradation: DegradationConfig = DegradationConfig()
    guards: list[str] = []  # guard profiles (guards.profiles) run on this model's requests (tokenway/guards)
    structured_output: ModelStructuredOutputConfig = ModelStructuredOutputConfig()  # tokenway.validation.options
    release: ReleaseConfig | None = None  # sticky weighted versions, a shadow (tokenway.releases)
    context: ContextConfig | None = None  # window and strategy for conversations too long (tokenway.shaping.options)
    prompt: PromptPin | None = None  # a prompt version its requests run with: name or name@3 (tokenway/prompts)

    @property
    def native_responses(self) -> bool:
        """Whether ``/v1/responses`` calls to this model go to its backends as they are (its deployments
        say ``responses: native``) rather than translated to chat."""
        return getattr(self.deployments[0].options, "responses", "translate") == "native"

    @model_validator(mode="after")
    def _name_deployments(self) -> ModelConfig:
        for index, deployment in enumerate(self.deployments):
            deployment.model = deployment.model or self.name
            deployment.name = deployment.name or f"{self.name}#{index}"
        return self


class Limits(_Strict):
    """Bounds on what a client may send; breaking one is a 400, 408, 413, 429 or 431 that says which
    (docs/security.md)."""

    max_body_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    max_messages: Annotated[int, Field(ge=1)] = 2048
    max_total_chars: Annotated[int, Field(ge=1)] = 2_000_000
    max_tokens: Annotated[int, Field(ge=1)] = 131_072
    # A slow client holds a connection and a task: the body must be in within body_timeout_s, plus a
    # second for every body_min_rate bytes that came (a large upload that keeps going), else 408; the
    # request line and headers within header_timeout_s (docs/security.md).
    body_timeout_s: Positive = 30.0
    body_min_rate: Annotated[int, Field(ge=1)] = 64 * 1024  # bytes per second
    header_timeout_s: Positive = 10.0
    max_header_count: Annotated[int, Field(ge=8)] = 100  # more headers: 431 and the connection closed
    max_header_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024  # request line and headers together: 431
    # Streams in flight at once per virtual key (a key's own max_streams overrides it); null: no cap.
    max_streams_per_key: Annotated[int, Field(ge=1)] | None = 64


class Streaming(_Strict):
    heartbeat_s: Positive = 10.0  # ": keep-alive" comments while the first token is awaited


class Logging(_Strict):
    requests: bool = True  # one JSON line per request
    sample: Annotated[float, Field(ge=0, le=1)] = 1.0  # share of successful requests logged
    content: bool = False  # log message content (redacted); off by default


class TracingConfig(_Strict):
    """OpenTelemetry (needs the ``tracing`` extra). Off by default: no cost on the request path."""

    enabled: bool = False
    exporter: Literal["otlp", "console", "none"] = "otlp"
    endpoint: str | None = None  # OTLP/HTTP traces URL; default: the exporter's (OTEL_EXPORTER_OTLP_* env)
    service_name: str = "tokenway"
    sample_ratio: Annotated[float, Field(ge=0, le=1)] = 1.0


class Observability(_Strict):
    overhead_header: bool = True  # x-tokenway-overhead-ms on every response
    metrics: bool = True  # GET /metrics
    tracing: TracingConfig = TracingConfig()


class GatewayConfig(_Strict):
    models: list[ModelConfig]
    limits: Limits = Limits()
    streaming: Streaming = Streaming()
    logging: Logging = Logging()
    cache: CacheConfig = CacheConfig()
    observability: Observability = Observability()
    access: AccessConfig = AccessConfig()  # keys, rate limits, budgets (tokenway.usage.options)
    jobs: JobsConfig = JobsConfig()  # the async API and batches (tokenway.jobs.options)
    guards: GuardsConfig = GuardsConfig()  # named guard profiles that models and keys use (tokenway.guards.options)
    structured_output: StructuredOutputConfig = StructuredOutputConfig()  # replies checked (tokenway.validation)
    responses: ResponsesConfig = ResponsesConfig()  # stored responses' TTL and bounds (tokenway.translate)
    prompts: PromptsConfig = PromptsConfig()  # prompt versions kept in the database (tokenway.prompts)
    record: RecordConfig = RecordConfig()  # requests recorded for replay (tokenway.replay)
    tiers: list[TierRouterConfig] = []  # public names routed to the cheapest able model (tokenway.tiers)

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        seen: set[str] = set()
        for model in models:
            if model.name in seen:
                raise ValueError(f"model name {model.name!r} appears twice")
            seen.add(model.name)
        for model in models:
            for name in model.fallbacks + model.context_fallbacks:
                if name not in seen or name == model.name:
                    raise ValueError(f"model {model.name!r}: fallback {name!r} is not another configured model")
        return models

    @model_validator(mode="after")
    def _guard_profiles_exist(self) -> GatewayConfig:
        for i, model in enumerate(self.models):
            for j, name in enumerate(model.guards):
                if name not in self.guards.profiles:
                    known = ", ".join(sorted(self.guards.profiles)) or "none"
                    raise LocatedError(("models", i, "guards", j),
                                       f"guard profile {name!r} is not under guards.profiles (defined: {known})")
        return self

    @model_validator(mode="after")
    def _native_responses_whole(self) -> GatewayConfig:
        """A model answers Responses natively or by translation, never half: its deployments agree, its
        fallbacks answer the same way (a relayed request cannot become a chat one mid-way), and no guard
        profile of its checks output (which only translated answers let the guards read)."""
        native = {model.name for model in self.models if model.native_responses}
        for i, model in enumerate(self.models):
            for j, deployment in enumerate(model.deployments):
                if getattr(deployment.options, "responses", "translate") != getattr(
                        model.deployments[0].options, "responses", "translate"):
                    raise LocatedError(("models", i, "deployments", j, "responses"),
                                       "every deployment of a model answers Responses the same way: set "
                                       "'responses: native' on all of them or on none")
            if model.name not in native:
                continue
            for field in ("fallbacks", "context_fallbacks"):
                for j, name in enumerate(getattr(model, field)):
                    if name not in native:
                        raise LocatedError((
                            "models", i, field, j), f"{name!r} translates Responses, and {model.name!r} relays "
                            "them natively: a relayed request cannot fall back to a translating model")
            for j, name in enumerate(model.guards):
                profile = self.guards.profiles.get(name)
                if profile is not None and profile.output:
                    raise LocatedError(("models", i, "guards", j),
                                       f"guard profile {name!r} checks output, which a model that relays Responses "
                                       "natively does not let it read; use input checks only, or translate")
        return self

    @model_validator(mode="after")
    def _release_models_exist(self) -> GatewayConfig:
        names = {model.name for model in self.models}
        native = {model.name for model in self.models if model.native_responses}
        for i, model in enumerate(self.models):
            release = model.release
            if release is None:
                continue
            targets: list[tuple[tuple[str | int, ...], str]] = [
                (("versions", j, "model"), version.model) for j, version in enumerate(release.versions)]
            targets += [(("shadow", "model"), release.shadow.model)] if release.shadow is not None else []
            for loc, name in targets:
                if name not in names:
                    raise LocatedError(("models", i, "release", *loc),
                                       f"{name!r} is not a configured model (a version is one of the models)")
                if (name in native) != (model.name in native):
                    raise LocatedError(("models", i, "release", *loc),
                                       f"{name!r} and {model.name!r} answer Responses differently (one relays them "
                                       "natively): a version answers as the model it stands in for")
        return self

    @model_validator(mode="after")
    def _summarizers_exist(self) -> GatewayConfig:
        names = [model.name for model in self.models]
        for i, model in enumerate(self.models):
            summarizer = model.context.summarizer if model.context is not None else None
            if summarizer is not None and (summarizer not in names or summarizer == model.name):
                raise LocatedError(("models", i, "context", "summarizer"),
                                   f"summarizer {summarizer!r} is not another configured model "
                                   f"(configured: {', '.join(names)})")
        return self

    @model_validator(mode="after")
    def _tier_models_exist(self) -> GatewayConfig:
        models = [m.name for m in self.models]
        for i, router in enumerate(self.tiers):
            if router.name in models or router.name in [r.name for r in self.tiers[:i]]:
                raise LocatedError(("tiers", i, "name"), f"{router.name!r} is already a model or router name")
            for j, tier in enumerate(router.tiers):
                if tier.model not in models:
                    raise LocatedError(("tiers", i, "tiers", j, "model"),
                                       f"model {tier.model!r} is not configured (models: {', '.join(models)})")
        return self

    def digest(self) -> str:
        """A short hash of the effective config (shown by admin status and logs). Keys are sorted: the order
        of a mapping in the YAML (a deployment's headers, say) is not part of the config."""
        dumped = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(dumped.encode()).hexdigest()[:12]


def default_config() -> GatewayConfig:
    """No config file: serve the embedded local model as ``local`` and the bundled MiniLM embeddings as
    ``local-embed``."""
    return GatewayConfig.model_validate({"models": [
        {"name": "local", "deployments": [{"provider": "local"}]},
        {"name": "local-embed", "deployments": [{"provider": "local-embed"}]},
    ]})


class LocatedError(ValueError):
    """A rule across fields broken at ``loc``: ``parse_config`` reports the line of that value, not of
    the model whose validator found it."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


YamlModel = TypeVar("YamlModel", bound=BaseModel)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, line and field."""


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML with YAML 1.2's booleans: only ``true`` and ``false``.

    YAML 1.1 also reads ``on``, ``off``, ``yes`` and ``no`` as booleans, which made the documented
    ``retry: {on: [5xx]}`` a ``True`` key and ``requantize: off`` the value ``False``. Boolean fields
    still take those words: pydantic reads "on", "off", "yes" and "no" as booleans.
    """

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # A tag the value does not fit (``!!int abc``, ``!!timestamp 2020-99-99``) fails in PyYAML's
        # constructor with ValueError and the like: report it as YAML at the value's line.
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            kind = node.tag.rsplit(":", 1)[-1]
            problem = f"the value {str(node.value)[:60]!r} is not a valid {kind}"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_config(path: Path | None) -> GatewayConfig:
    if path is None:
        return default_config()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    return parse_config(text, str(path))


def parse_config(text: str, source: str = "<config>") -> GatewayConfig:
    data, node = _yaml_document(text, source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the config must be a mapping with a 'models' list")
    config = _validated(GatewayConfig, data, node, source)
    infinite = _first_non_finite(config.model_dump())
    if infinite is not None:  # `.inf` passes "greater than 0": an infinite weight or timeout breaks what reads it
        raise ConfigError(f"{source}:{_line_of(node, infinite)}: {_dotted(infinite)}: not a finite number")
    return config


def parse_yaml(text: str, source: str, model: type[YamlModel]) -> YamlModel:
    """Any YAML file read into ``model`` (a pydantic model), with ``parse_config``'s errors: each names
    the file, line and field."""
    data, node = _yaml_document(text, source)
    return _validated(model, data, node, source)


def _yaml_document(text: str, source: str) -> tuple[Any, Any]:
    """The YAML's data, and its node tree (kept to find the line of each error)."""
    try:
        loader = _Yaml12Loader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        position = getattr(exc, "position", None)  # a character the reader refuses (ReaderError) has no mark
        line = mark.line + 1 if mark else text.count("\n", 0, position) + 1 if position is not None else 1
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or exc  # ReaderError: reason
        raise ConfigError(f"{source}:{line}: not valid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{source}:1: not valid YAML for a config: it nests too deeply") from None
    return data, node


def _validated(model: type[YamlModel], data: Any, node: Any, source: str) -> YamlModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            loc = [p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
            loc += getattr(error.get("ctx", {}).get("error"), "loc", ())
            line = _line_of(node, loc)
            field = _dotted(loc) or "(top level)"
            lines.append(f"{source}:{line}: {field}: {error['msg']}")
        raise ConfigError("\n".join(lines)) from None


def _first_non_finite(data: Any) -> list[Any] | None:
    """The path to the first number in ``data`` (a config's dump) that is infinite or not a number."""
    stack: list[tuple[list[Any], Any]] = [([], data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return path
        if isinstance(value, dict):
            stack.extend(([*path, k], v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend(([*path, i], v) for i, v in reversed(list(enumerate(value))))
    return None


def _line_of(node: Any, loc: list[Any]) -> int:
    """The 1-based line of the deepest YAML node along ``loc`` that exists."""
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == part), None)
            if match is None:
                key = next((k for k, _ in node.value if k.value == part), None)
                return key.start_mark.line + 1 if key is not None else line
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
