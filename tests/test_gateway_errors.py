"""Bad input and bad backends: always OpenAI's envelope, the right status, never a hang."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.fakes import FakeUpstream
from tests.servers import running_gateway
from tests.test_gateway_openai import MESSAGES, client, config


def post(base: str, body: object = None, content: bytes | None = None, **kw: object) -> httpx.Response:
    if content is not None:
        return httpx.post(base + "/v1/chat/completions", content=content,
                          headers={"content-type": "application/json"}, timeout=10, **kw)  # type: ignore[arg-type]
    return httpx.post(base + "/v1/chat/completions", json=body, timeout=10, **kw)  # type: ignore[arg-type]


def error_of(r: httpx.Response) -> dict[str, object]:
    body = r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]  # type: ignore[no-any-return]


def test_client_errors_get_the_envelope(upstream: FakeUpstream) -> None:
    limits = "limits: {max_body_bytes: 2048, max_messages: 3, max_tokens: 100}"
    with running_gateway(config(upstream, extra=limits)) as base:
        r = post(base, content=b'{"model": "m", "messages": [')
        assert r.status_code == 400 and error_of(r)["code"] == "invalid_json"
        r = post(base, content=b"[1, 2]")
        assert r.status_code == 400 and "JSON object" in str(error_of(r)["message"])
        r = post(base, content=b"")
        assert r.status_code == 400
        r = post(base, {"model": "m", "messages": MESSAGES, "temperature": "hot"})
        assert r.status_code == 400 and error_of(r)["param"] == "temperature"
        r = post(base, {"model": "m", "messages": MESSAGES, "temperature": 3})
        assert r.status_code == 400 and error_of(r)["param"] == "temperature"
        r = post(base, {"model": "m", "messages": [{"role": "user", "content": 5}]})
        assert r.status_code == 400 and error_of(r)["param"] == "messages[0].content"
        r = post(base, {"model": "m"})
        assert r.status_code == 400 and error_of(r)["param"] == "messages"
        r = post(base, {"model": "m", "messages": []})
        assert r.status_code == 400 and error_of(r)["param"] == "messages"
        r = post(base, {"model": "nope", "messages": MESSAGES})
        assert r.status_code == 404 and error_of(r)["code"] == "model_not_found" and "m" in str(error_of(r)["message"])
        r = post(base, {"model": "m", "messages": MESSAGES * 4})
        assert r.status_code == 400 and error_of(r)["param"] == "messages"
        r = post(base, {"model": "m", "messages": MESSAGES, "max_tokens": 101})
        assert r.status_code == 400 and error_of(r)["param"] == "max_tokens"
        r = post(base, {"model": "m", "messages": [{"role": "user", "content": "x" * 4000}]})
        assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"
        r = httpx.get(base + "/v1/chat/completions")
        assert r.status_code == 405 and error_of(r)["code"] == "method_not_allowed"
        r = httpx.get(base + "/v1/nothing-here")
        assert r.status_code == 404 and error_of(r)["type"] == "invalid_request_error"
        r = httpx.get(base + "/v1/models/nope")
        assert r.status_code == 404 and error_of(r)["code"] == "model_not_found"
    assert upstream.seen == []  # nothing invalid reached the backend


def test_sdk_raises_the_right_exception_classes(upstream: FakeUpstream) -> None:
    with running_gateway(config(upstream)) as base:
        with pytest.raises(openai.NotFoundError):
            client(base).chat.completions.create(model="nope", messages=MESSAGES)
        with pytest.raises(openai.BadRequestError):
            client(base).chat.completions.create(model="m", messages=MESSAGES, temperature=9)


@pytest.mark.parametrize(("scenario", "status", "code"), [
    ("status500", 502, "upstream_error"),
    ("badjson", 502, "upstream_error"),
    ("status400", 400, None),
])
def test_upstream_failures_map_to_statuses(
    upstream: FakeUpstream, scenario: str, status: int, code: str | None
) -> None:
    with running_gateway(config(upstream, scenario)) as base:
        r = post(base, {"model": "m", "messages": MESSAGES})
    assert r.status_code == status
    assert error_of(r)["code"] == code


def test_upstream_429_keeps_retry_after(upstream: FakeUpstream) -> None:
    with running_gateway(config(upstream, "status429")) as base:
        r = post(base, {"model": "m", "messages": MESSAGES})
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert error_of(r)["type"] == "rate_limit_error"


def test_unreachable_backend_is_502(upstream: FakeUpstream) -> None:
    yaml = "models:\n  - name: m\n    deployments:\n      - {provider: openai, api_base: 'http://127.0.0.1:9/v1'}\n"
    with running_gateway(yaml) as base:
        r = post(base, {"model": "m", "messages": MESSAGES})
    assert r.status_code == 502 and error_of(r)["code"] == "upstream_unavailable"


def test_hanging_backend_times_out_not_hangs(upstream: FakeUpstream) -> None:
    timeouts = "timeouts: {first_token: 0.5, total: 1}"
    with running_gateway(config(upstream, "hang", deployment=timeouts)) as base:
        started = time.perf_counter()
        r = post(base, {"model": "m", "messages": MESSAGES})
        elapsed = time.perf_counter() - started
        s = post(base, {"model": "m", "messages": MESSAGES, "stream": True})
    assert r.status_code == 504 and error_of(r)["code"] == "upstream_timeout"
    assert elapsed < 3
    assert s.status_code == 504


def test_concurrency_limit_sheds_with_retry_after(upstream: FakeUpstream) -> None:
    yaml = config(upstream, "slowfirst", deployment="max_concurrency: 1")
    with running_gateway(yaml) as base:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, base, {"model": "m", "messages": MESSAGES, "stream": True})
            time.sleep(0.2)
            second = post(base, {"model": "m", "messages": MESSAGES})
            assert first.result().status_code == 200
        third = post(base, {"model": "m", "messages": MESSAGES})
    assert third.status_code == 200  # the slot was given back
    assert second.status_code == 503 and "retry-after" in second.headers
    assert error_of(second)["code"] == "overloaded"


def test_invalid_config_points_at_the_line(tmp_path: object) -> None:
    from tokenway.config import ConfigError, parse_config

    text = (
        "models:\n  - name: m\n    deployments:\n      - provider: openai\n        api_base: http://x\n"
        "        weight: -2\n"
    )
    with pytest.raises(ConfigError, match=r"<config>:6: models\[0\]\.deployments\[0\]\.weight"):
        parse_config(text)
    with pytest.raises(ConfigError, match=r"unknown provider 'nope'"):
        parse_config("models:\n  - name: m\n    deployments:\n      - provider: nope\n")
    with pytest.raises(ConfigError, match=r"<config>:3: not valid YAML"):
        parse_config("models:\n  - name: [a\n    deployments: []\n")
