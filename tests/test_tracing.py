"""OpenTelemetry: spans for the request, each policy and the upstream call; traceparent goes upstream."""

from __future__ import annotations

import httpx
import pytest

from tests.fakes import FakeUpstream
from tests.servers import running_app
from tests.test_gateway_openai import MESSAGES, config

pytest.importorskip("opentelemetry.sdk")


def test_spans_attributes_and_propagation(upstream: FakeUpstream) -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    yaml = config(upstream, extra="observability: {tracing: {enabled: true, exporter: none}}")
    with running_app(yaml) as (base, app):
        assert app.tracing is not None
        app.tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
        r = httpx.post(base + "/v1/chat/completions",
                       json={"model": "m", "messages": MESSAGES, "temperature": 0.5, "max_tokens": 20})
        assert r.status_code == 200
    spans = {span.name: span for span in exporter.get_finished_spans()}
    root = spans["chat request"]
    upstream_span = spans["chat m"]
    assert any(name.startswith("policy ") for name in spans)
    assert upstream_span.parent is not None and upstream_span.context.trace_id == root.context.trace_id
    assert upstream_span.attributes["gen_ai.request.temperature"] == 0.5
    assert upstream_span.attributes["gen_ai.request.max_tokens"] == 20
    assert root.attributes["gen_ai.usage.output_tokens"] == 6
    assert root.attributes["http.response.status_code"] == 200
    traceparent = upstream.seen[0].headers["traceparent"]
    assert traceparent.split("-")[1] == format(root.context.trace_id, "032x")
