"""OpenTelemetry spans: the request, each policy, each upstream attempt (optional, off by default).

Install the ``tracing`` extra and set ``observability.tracing.enabled``. Spans carry the GenAI
semantic-convention attributes (``gen_ai.*``); the upstream call gets a W3C ``traceparent``
header, and the trace id goes into the request's log line. When tracing is off nothing here
is imported and the request path is unchanged.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from tokenway.context import RequestContext
from tokenway.policies.base import Handler, Policy
from tokenway.providers.base import Answer, Call

if TYPE_CHECKING:
    from tokenway.config import TracingConfig

_OPERATION = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}
_REQUEST_ATTRIBUTES = {
    "max_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "seed": "gen_ai.request.seed",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
}


class Tracing:
    def __init__(self, config: TracingConfig) -> None:
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:
            raise RuntimeError(
                "Tracing is enabled but OpenTelemetry is not installed: pip install 'tokenway[tracing]'."
            ) from exc
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBasedTraceIdRatio(config.sample_ratio),
        )
        if config.exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=config.endpoint)))
        elif config.exporter == "console":
            self.provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        self.tracer = self.provider.get_tracer("tokenway")
        self._propagator = TraceContextTextMapPropagator()

    def request_span(self, ctx: RequestContext) -> AbstractContextManager[Any]:
        """The root span of one request; it becomes the current span for the policies below it."""
        return self.tracer.start_as_current_span(f"{ctx.endpoint} request", kind=_server_kind())

    def trace_id(self, span: Any) -> str:
        return format(span.get_span_context().trace_id, "032x")

    def finish_request(self, span: Any, ctx: RequestContext) -> None:
        span.set_attribute("http.response.status_code", ctx.status)
        span.set_attribute("tokenway.request_id", ctx.request_id)
        if ctx.model:
            span.set_attribute("gen_ai.request.model", ctx.model)
        if ctx.deployment:
            span.set_attribute("tokenway.deployment", ctx.deployment)
        if ctx.usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", ctx.usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", ctx.usage.completion_tokens)
        if ctx.error_type:
            span.set_attribute("error.type", ctx.error_type)

    def wrap(self, policy: Policy) -> Policy:
        return _TracedPolicy(self, policy)

    def wrap_upstream(self, call_upstream: Handler) -> Handler:
        async def traced(ctx: RequestContext, call: Call) -> Answer:
            with self.tracer.start_as_current_span(f"{_OPERATION[call.kind]} {call.body.get('model')}",
                                                   kind=_client_kind()) as span:
                _request_attributes(span, call)
                if ctx.deployment:
                    span.set_attribute("tokenway.deployment", ctx.deployment)
                carrier: dict[str, str] = {}
                self._propagator.inject(carrier)
                ctx.upstream_headers.update(carrier)
                return await call_upstream(ctx, call)

        return traced

    def shutdown(self) -> None:
        self.provider.shutdown()


class _TracedPolicy:
    def __init__(self, tracing: Tracing, policy: Policy) -> None:
        self._tracer = tracing.tracer
        self._policy = policy
        self._name = f"policy {type(policy).__name__}"

    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        with self._tracer.start_as_current_span(self._name):
            return await self._policy(ctx, call, next)


def _request_attributes(span: Any, call: Call) -> None:
    span.set_attribute("gen_ai.operation.name", _OPERATION[call.kind])
    span.set_attribute("gen_ai.request.model", str(call.body.get("model")))
    for field, attribute in _REQUEST_ATTRIBUTES.items():
        value = call.body.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            span.set_attribute(attribute, value)


def _server_kind() -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind.SERVER


def _client_kind() -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind.CLIENT
