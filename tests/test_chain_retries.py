"""Retries in process: backoff, Retry-After, the retry budget and what is never retried, on fake time."""

from __future__ import annotations

import pytest

from tests.inprocess import TEXT, fail, gateway, http_error, timed_out, unreachable


def one_model(*deployments: str, model: str = "") -> str:
    """Model ``m`` served by fake deployments of these names; ``model`` adds YAML fields to it."""
    rows = "".join(f"      - {{provider: fake, name: {name}}}\n" for name in deployments)
    extra = "".join(f"    {line}\n" for line in model.splitlines() if line.strip())
    return f"models:\n  - name: m\n    deployments:\n{rows}{extra}"


async def test_transient_failures_are_retried_after_a_jittered_backoff() -> None:
    async with gateway(one_model("a", model="retry: {backoff_base: 1, backoff_max: 1.5}")) as gw:
        gw.fake("a").script(fail(http_error(503)), fail(unreachable()))
        started = gw.clock.now()
        r = await gw.chat()
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == TEXT
        assert len(gw.fake("a").calls) == 3
        assert gw.decisions()["retry.attempt"] == 2
        first, second = gw.clock.slept  # full jitter: U(0, min(max, base * 2**n))
        assert 0 <= first <= 1 and 0 <= second <= 1.5
        assert gw.clock.now() - started == pytest.approx(first + second)  # and only that long


async def test_attempts_are_bounded_and_the_last_error_is_relayed_with_retry_after() -> None:
    async with gateway(one_model("a", model="retry: {attempts: 3}")) as gw:
        gw.fake("a").script(then=fail(http_error(500)))
        r = await gw.chat()
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
        assert r.headers["retry-after"] == "5"  # the model's degradation.retry_after
        assert len(gw.fake("a").calls) == 3
        assert gw.decisions()["retry.attempts_exhausted"] == 1


async def test_timeouts_and_connect_errors_are_retried_unless_retry_on_leaves_them_out() -> None:
    async with gateway(one_model("a")) as gw:
        gw.fake("a").script(fail(timed_out()), fail(unreachable()))
        assert (await gw.chat()).status_code == 200
        assert len(gw.fake("a").calls) == 3
    async with gateway(one_model("a", model="retry: {on: [connect]}")) as gw:
        gw.fake("a").script(fail(timed_out()))
        r = await gw.chat()
        assert r.status_code == 504 and len(gw.fake("a").calls) == 1


async def test_a_request_the_backend_refuses_is_relayed_without_a_retry() -> None:
    async with gateway(one_model("a", "b")) as gw:
        gw.fake("a").script(fail(http_error(400)))
        r = await gw.chat()
        assert r.status_code == 400 and r.json()["error"]["message"] == "The backend answered 400."
        assert len(gw.fake("a").calls) == 1 and gw.fake("b").calls == []


async def test_a_short_retry_after_is_waited_out_on_the_clock_when_no_other_deployment_can_serve() -> None:
    async with gateway(one_model("a")) as gw:
        gw.fake("a").script(fail(http_error(429, retry_after=1)))
        started = gw.clock.now()
        r = await gw.chat()
        assert r.status_code == 200 and len(gw.fake("a").calls) == 2
        assert gw.decisions()["retry.retry_after_waited"] == 1
        assert gw.clock.now() - started == 1.0  # the backend asked for a second and got exactly that


async def test_a_long_retry_after_ends_the_retries_and_goes_to_the_client() -> None:
    async with gateway(one_model("a", model="retry: {max_retry_after: 5}")) as gw:
        gw.fake("a").script(fail(http_error(429, retry_after=30)))
        r = await gw.chat()
        assert r.status_code == 429 and r.headers["retry-after"] == "30"
        assert len(gw.fake("a").calls) == 1 and gw.clock.slept == []
        assert gw.decisions()["retry.retry_after_too_long"] == 1


async def test_retry_after_keeps_traffic_away_until_it_has_passed() -> None:
    async with gateway(one_model("a", "b")) as gw:
        gw.fake("a").script(fail(http_error(429, retry_after=10)))
        for _ in range(4):
            assert (await gw.chat()).status_code == 200
        assert len(gw.fake("a").calls) == 1  # limited once, then left alone: b took the retry and the rest
        assert "retry.retry_after_waited" not in gw.decisions()
        gw.clock.advance(10)
        for _ in range(2):
            assert (await gw.chat()).status_code == 200
        assert len(gw.fake("a").calls) == 2  # back in the rotation


async def test_the_retry_budget_caps_extra_load_and_refills_with_time() -> None:
    model = ("retry: {attempts: 3, budget_ratio: 0, budget_min_per_s: 1, backoff_base: 0}\n"
             "breaker: {consecutive_failures: 1000, min_calls: 1000}")  # keep the breaker out of it
    async with gateway(one_model("a", model=model)) as gw:
        gw.fake("a").script(then=fail(http_error(503)))
        statuses = [(await gw.chat()).status_code for _ in range(8)]
        assert statuses == [502] * 8
        # the bucket starts with 10 retries: 5 calls use two each, the last 3 get none
        assert len(gw.fake("a").calls) == 5 * 3 + 3
        assert gw.decisions()["retry.budget_exhausted"] == 3
        gw.clock.advance(2)  # budget_min_per_s: two more retries' worth
        await gw.chat()
        assert len(gw.fake("a").calls) == 18 + 3
