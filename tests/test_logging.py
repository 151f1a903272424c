"""The request log: one JSON line per request, no content or keys unless asked, redaction, levels."""

from __future__ import annotations

import io
import json

from tokenway.context import RequestContext
from tokenway.observability.logging import JsonLog, redact


def lines(buffer: io.BytesIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_redaction_of_keys_emails_and_phone_numbers() -> None:
    text = "mail bob@example.com, call +1 (415) 555-0100, key sk-abcdefghijklmnop, Authorization: Bearer xyz.123"
    out = redact(text)
    assert "bob@example.com" not in out and "555-0100" not in out and "sk-abcdefghijklmnop" not in out
    assert "xyz.123" not in out
    assert "[email]" in out and "[phone]" in out and "[key]" in out


def test_one_line_per_request_without_content_by_default() -> None:
    buffer = io.BytesIO()
    log = JsonLog(buffer)
    ctx = RequestContext(request_id="req_1", endpoint="chat", api_key="sk-secret-key-123456")
    ctx.content = "user: my email is a@b.co"
    log.request(ctx, ctx.started + 0.25)
    log.flush()
    (line,) = lines(buffer)
    assert line["request_id"] == "req_1" and line["status"] == 200 and line["latency_ms"] == 250.0
    assert "content" not in line and "sk-secret" not in buffer.getvalue().decode()


def test_content_logging_is_redacted_when_on() -> None:
    buffer = io.BytesIO()
    log = JsonLog(buffer, content=True)
    ctx = RequestContext(request_id="req_2", endpoint="chat")
    ctx.content = "user: my email is a@b.co"
    log.request(ctx, ctx.started)
    log.flush()
    assert lines(buffer)[0]["content"] == "user: my email is [email]"


def test_level_and_sampling() -> None:
    buffer = io.BytesIO()
    log = JsonLog(buffer, level="error", sample=0.0)
    ok = RequestContext(request_id="a", endpoint="chat")
    failed = RequestContext(request_id="b", endpoint="chat", status=502)
    log.request(ok, ok.started)
    log.request(failed, failed.started)
    log.event("starting")
    log.flush()
    assert [line["request_id"] for line in lines(buffer)] == ["b"]
