"""The console's session, hardened: logging out ends the session on every replica (a copied cookie gets
401), and wrong master keys are limited per client address (429 with Retry-After)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import jsonschema
import pytest
import redis.asyncio

from tests.access_support import REDIS
from tests.console_support import MASTER, console_config
from tests.fakes import FakeUpstream
from tests.jobs_support import batch_lines
from tests.servers import free_port, running_app
from tokenway.asgi import Message, Scope
from tokenway.console.ended import (
    REFRESH_S,
    MemoryEndedSessions,
    RedisEndedSessions,
    SessionsUnavailable,
    without_ended_sessions,
)
from tokenway.console.login_limit import FAILURES, WINDOW_S, MemoryLoginAttempts, RedisLoginAttempts
from tokenway.console.session import Sessions

ASK = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


def log_in(base: str) -> httpx.Client:
    client = httpx.Client(base_url=base)
    answer = client.post("/ui/session", json={"key": MASTER})
    assert answer.status_code == 200, answer.text
    return client


def copied(client: httpx.Client) -> tuple[dict[str, str], dict[str, str]]:
    """The session's cookies as another machine would send them, and the CSRF header."""
    cookies = {name: client.cookies[name] for name in ("tokenway_session", "tokenway_csrf")}
    return cookies, {"x-tokenway-csrf": cookies["tokenway_csrf"]}


def test_logging_out_ends_a_copied_session_on_the_same_gateway(upstream: FakeUpstream, tmp_path: Path) -> None:
    with running_app(console_config(upstream), master_key=MASTER, data_dir=tmp_path) as (base, _):
        client = log_in(base)
        cookies, csrf = copied(client)
        other = log_in(base)  # a second session, in another browser, goes on
        assert httpx.get(base + "/admin/keys", cookies=cookies).status_code == 200
        assert client.delete("/ui/session").status_code == 204
        refused = httpx.get(base + "/admin/keys", cookies=cookies)
        assert refused.status_code == 401 and "master key" in refused.json()["error"]["message"]
        assert httpx.post(base + "/admin/keys", json={"name": "after-logout"}, cookies=cookies,
                          headers=csrf).status_code == 401
        playground = httpx.post(base + "/ui/playground/chat/completions", json=ASK, cookies=cookies, headers=csrf)
        assert playground.status_code == 401 and "/ui/login" in playground.json()["error"]["message"]
        page = httpx.get(base + "/ui/", cookies=cookies)
        assert (page.status_code, page.headers["location"]) == (303, "/ui/login")
        assert other.get("/admin/keys").status_code == 200
        assert httpx.get(base + "/admin/keys", headers={"Authorization": f"Bearer {MASTER}"}).status_code == 200
        # logging out with a forged cookie is harmless: nothing is stored, the real session goes on
        forged = other.cookies["tokenway_session"][:-4] + "0000"
        assert httpx.delete(base + "/ui/session", cookies={"tokenway_session": forged}).status_code == 204
        assert other.get("/admin/keys").status_code == 200
        client.close()
        other.close()


def test_a_logout_on_one_gateway_ends_the_session_on_another_sharing_redis(
        upstream: FakeUpstream, tmp_path: Path) -> None:
    config = console_config(upstream)  # one redis prefix for both
    with ExitStack() as stack:
        first, _ = stack.enter_context(running_app(config, master_key=MASTER, data_dir=tmp_path / "a",
                                                   redis_url=REDIS))
        second, _ = stack.enter_context(running_app(config, master_key=MASTER, data_dir=tmp_path / "b",
                                                    redis_url=REDIS))
        client = log_in(first)
        cookies, _ = copied(client)
        assert httpx.get(second + "/admin/keys", cookies=cookies).status_code == 200
        assert client.delete("/ui/session").status_code == 204
        assert httpx.get(first + "/admin/keys", cookies=cookies).status_code == 401  # at once where it logged out
        deadline = time.monotonic() + REFRESH_S + 2
        while httpx.get(second + "/admin/keys", cookies=cookies).status_code == 200:
            assert time.monotonic() < deadline, "the other gateway still took the ended session"
            time.sleep(0.1)
        assert httpx.get(second + "/admin/keys", cookies=cookies).status_code == 401
        # the wrong keys are counted in Redis too: four on one gateway, one on the other, then both refuse
        for base in (first,) * (FAILURES - 1) + (second,):
            assert httpx.post(base + "/ui/session", json={"key": "wrong"}).status_code == 403
        for base in (first, second):
            assert httpx.post(base + "/ui/session", json={"key": MASTER}).status_code == 429
        client.close()


def test_wrong_keys_are_limited_per_address_and_a_login_resets_the_count(
        upstream: FakeUpstream, tmp_path: Path) -> None:
    with running_app(console_config(upstream), master_key=MASTER, data_dir=tmp_path,
                     trusted_proxies="127.0.0.1/32") as (base, _):
        def attempt(key: str, client: str) -> httpx.Response:
            return httpx.post(base + "/ui/session", json={"key": key}, headers={"x-forwarded-for": client})

        for _ in range(FAILURES - 1):
            assert attempt("wrong", "203.0.113.7").status_code == 403
        assert attempt(MASTER, "203.0.113.7").status_code == 200  # resets the count
        for _ in range(FAILURES):
            assert attempt("wrong", "203.0.113.7").status_code == 403
        limited = attempt(MASTER, "203.0.113.7")  # refused before the key is even compared
        assert limited.status_code == 429 and "set-cookie" not in limited.headers
        assert 1 <= int(limited.headers["retry-after"]) <= WINDOW_S
        error = limited.json()["error"]
        assert error["type"] == "rate_limit_error" and f"{FAILURES} wrong keys" in error["message"]
        assert attempt(MASTER, "198.51.100.2").status_code == 200  # another client, behind the same proxy
        # the master key itself is not limited: the admin API still answers it
        assert httpx.get(base + "/admin/keys", headers={"Authorization": f"Bearer {MASTER}"}).status_code == 200


def test_the_login_window_runs_from_the_first_attempt() -> None:
    now = [1000.0]
    attempts = MemoryLoginAttempts(clock=lambda: now[0])

    async def scenario() -> list[float]:
        waits = []
        for _ in range(FAILURES):
            waits.append(await attempts.admit("a"))
            now[0] += 1
        waits.append(await attempts.admit("a"))  # the sixth: refused until the minute is over
        waits.append(await attempts.admit("b"))
        now[0] += WINDOW_S
        waits.append(await attempts.admit("a"))  # a new window
        return waits

    assert asyncio.run(scenario()) == [0.0] * FAILURES + [WINDOW_S - FAILURES, 0.0, 0.0]


def test_a_burst_of_attempts_gets_no_more_tries_than_one_by_one() -> None:
    async def scenario() -> tuple[list[float], list[float]]:
        client = redis.asyncio.from_url(REDIS)
        prefix = f"tw-test-login-{secrets.token_hex(4)}:"
        try:
            in_redis = await asyncio.gather(*(RedisLoginAttempts(client, prefix).admit("a") for _ in range(20)))
            assert await client.ttl(prefix + "a") <= WINDOW_S
        finally:
            await client.delete(prefix + "a")
            await client.aclose()
        memory = MemoryLoginAttempts()
        return in_redis, await asyncio.gather(*(memory.admit("a") for _ in range(20)))

    for waits in asyncio.run(scenario()):
        assert sum(1 for wait in waits if wait == 0) == FAILURES
        assert all(0 < wait <= WINDOW_S for wait in waits if wait)


def test_ended_sessions_are_kept_until_their_cookie_would_have_expired() -> None:
    now = [1000.0]
    ended = MemoryEndedSessions(clock=lambda: now[0])

    async def scenario() -> tuple[bool, bool, bool]:
        await ended.end("old", 1010)
        await ended.end("new", 5000)
        now[0] = 2000
        await ended.end("newer", 6000)  # drops "old": its cookie expired by itself
        return await ended.ended("old"), await ended.ended("new"), await ended.ended("newer")

    assert asyncio.run(scenario()) == (False, True, True)


def test_redis_ended_sessions_are_read_at_most_once_a_refresh() -> None:
    key = f"tw-test-ended-{secrets.token_hex(4)}"
    now = [time.time()]

    async def scenario() -> list[bool]:
        client = redis.asyncio.from_url(REDIS)
        here, there = RedisEndedSessions(client, key, lambda: now[0]), RedisEndedSessions(client, key, lambda: now[0])
        try:
            seen = [await there.ended("s1")]  # reads the (empty) list
            await here.end("s1", int(now[0]) + 60)
            seen += [await here.ended("s1"), await there.ended("s1")]  # here at once; there from its copy
            now[0] += REFRESH_S
            seen.append(await there.ended("s1"))
            ttl = await client.ttl(key)
            assert 0 < ttl <= 12 * 3600
        finally:
            await client.delete(key)
            await client.aclose()
        return seen

    assert asyncio.run(scenario()) == [False, True, False, True]


def test_an_unreachable_redis_is_a_503_in_the_envelope_not_an_open_door() -> None:
    token = Sessions(MASTER).issue().token
    sent: list[Message] = []

    async def endpoint(scope: Scope, receive: object, send: object) -> None:
        raise AssertionError("the request went on without its session being checked")

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def scenario() -> None:
        client = redis.asyncio.from_url(f"redis://127.0.0.1:{free_port()}/0")
        ended = RedisEndedSessions(client, "tw-test-ended-down")
        serve = without_ended_sessions(endpoint, ended)
        try:
            await serve({"type": "http", "headers": [(b"cookie", f"tokenway_session={token}".encode())]},
                        receive, send)
            for attempt in (ended.end("s1", 2**31), RedisLoginAttempts(client, "tw-test-login-down:").admit("a")):
                with pytest.raises(SessionsUnavailable):  # a logout, a login: the 503 envelope too
                    await attempt
        finally:
            await client.aclose()

    asyncio.run(scenario())
    assert sent[0]["status"] == 503
    assert b"Redis is unreachable" in sent[1]["body"]


def test_the_consoles_admin_answers_are_what_the_document_says(upstream: FakeUpstream, tmp_path: Path) -> None:
    """The fuzzer reaches the admin cancels only with unknown ids (404): here they answer 200, with real
    objects, and each answer is checked against its schema in /openapi.json."""
    auth = {"Authorization": f"Bearer {MASTER}"}
    with running_app(console_config(upstream), master_key=MASTER, data_dir=tmp_path) as (base, _):
        document = httpx.get(base + "/openapi.json").json()

        def holds(method: str, path: str, answer: httpx.Response, expected: int = 200) -> None:
            assert answer.status_code == expected, (path, answer.text)
            status = str(answer.status_code)
            schema = document["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
            jsonschema.validate(answer.json(), {**schema, "components": document["components"]})

        stuck = httpx.post(base + "/v1/async/chat/completions", headers=auth, json={**ASK, "model": "stuck"})
        holds("post", "/admin/jobs/{job_id}/cancel",
              httpx.post(f"{base}/admin/jobs/{stuck.json()['id']}/cancel", headers=auth))
        uploaded = httpx.post(base + "/v1/files", headers=auth, data={"purpose": "batch"},
                              files={"file": ("lines.jsonl", batch_lines(2, model="stuck"))}).json()
        batch = httpx.post(base + "/v1/batches", headers=auth, json={
            "input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}).json()
        holds("post", "/admin/batches/{batch_id}/cancel",
              httpx.post(f"{base}/admin/batches/{batch['id']}/cancel", headers=auth))
        httpx.post(base + "/v1/chat/completions", headers=auth, json=ASK)  # counters and spend to show
        overview = httpx.get(base + "/admin/overview", headers=auth)
        assert overview.json()["models"]["fake"]["ttft_buckets"][-1][0] is None  # +inf, as null
        holds("get", "/admin/overview", overview)
        holds("post", "/ui/session", httpx.post(base + "/ui/session", json={"key": MASTER}))
        for _ in range(FAILURES):
            holds("post", "/ui/session", httpx.post(base + "/ui/session", json={"key": "wrong"}), 403)
        holds("post", "/ui/session", httpx.post(base + "/ui/session", json={"key": "wrong"}), 429)
        assert "/ui/session" in document["paths"] and "/ui/" not in document["paths"]  # pages stay out
