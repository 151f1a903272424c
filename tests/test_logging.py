"""The one log: a JSON line per request, no content or keys unless asked, redaction, levels, and
stdlib ``logging`` records (ours and libraries') as JSON lines of the same log."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time

import pytest

from tests.fakes import FakeUpstream
from tests.servers import running_gateway
from tests.test_gateway_openai import config
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


def test_stdlib_records_are_json_lines_while_the_log_runs() -> None:
    buffer = io.BytesIO()
    log = JsonLog(buffer, level="info")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    engine = logging.getLogger("tokenway.providers.local.x")

    async def serve_a_while() -> None:
        log.start()
        engine.warning("slot %d stuck for %.1fs", 3, 2.5)
        engine.debug("below the log level")
        try:
            raise RuntimeError("decode failed")
        except RuntimeError:
            engine.exception("the decode loop failed")
        # The llama decode loop logs from its own thread.
        await asyncio.to_thread(logging.getLogger("some.library").error, "from a thread")
        await log.aclose()

    asyncio.run(serve_a_while())
    engine.warning("after shutdown")
    warning, failure, threaded = lines(buffer)
    assert {k: warning[k] for k in ("level", "event", "logger", "message")} == {
        "level": "warning", "event": "log", "logger": "tokenway.providers.local.x", "message": "slot 3 stuck for 2.5s",
    }
    assert str(warning["ts"]).endswith("Z") and "traceback" not in warning
    assert failure["level"] == "error" and failure["message"] == "the decode loop failed"
    assert "RuntimeError: decode failed" in str(failure["traceback"])
    assert threaded["logger"] == "some.library" and threaded["message"] == "from a thread"
    assert root.handlers == handlers and root.level == level  # nothing leaks into the next test


def test_stdlib_records_follow_the_log_level() -> None:
    buffer = io.BytesIO()
    log = JsonLog(buffer, level="error")
    log.capture_stdlib()
    try:
        logging.getLogger("tokenway.test").warning("not at error level")
        logging.getLogger("tokenway.test").error("at error level")
    finally:
        log.release_stdlib()
    assert [line["message"] for line in lines(buffer)] == ["at error level"]


def test_a_running_gateway_writes_library_records_to_its_stdout(
    upstream: FakeUpstream, capfd: pytest.CaptureFixture[str]
) -> None:
    handlers = list(logging.getLogger().handlers)
    with running_gateway(config(upstream)):
        capfd.readouterr()
        logging.getLogger("tokenway.providers.local.x").warning("engine warning")
        try:
            raise KeyError("missing")
        except KeyError:
            logging.getLogger("tokenway.providers.local.x").exception("engine failure")
        time.sleep(0.5)  # the log's flusher writes a few times a second
        out = capfd.readouterr().out
    records = [json.loads(line) for line in out.splitlines() if '"event":"log"' in line]
    by_message = {record["message"]: record for record in records}
    assert by_message["engine warning"]["level"] == "warning"
    assert by_message["engine failure"]["level"] == "error"
    assert "KeyError: 'missing'" in by_message["engine failure"]["traceback"]
    assert logging.getLogger().handlers == handlers  # the gateway's shutdown took its handler away
