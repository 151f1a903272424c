"""Circuit breakers in process: ejection, shedding while open, half-open probes after the cooldown."""

from __future__ import annotations

import asyncio

from tests.inprocess import fail, gateway, http_error, reply
from tests.test_chain_retries import one_model


async def test_the_breaker_opens_and_routing_skips_the_failing_deployment() -> None:
    async with gateway(one_model("bad", "good", model="breaker: {consecutive_failures: 2, cooldown: 60}")) as gw:
        gw.fake("bad").script(then=fail(http_error(500)))
        assert [(await gw.chat()).status_code for _ in range(10)] == [200] * 10
        assert len(gw.fake("bad").calls) == 2  # then ejected: the other 8 calls never tried it
        breaker = gw.deployment("bad").breaker
        assert breaker.state == "open" and "2 consecutive" in breaker.reason
        assert gw.decisions()["skip.breaker_open"] >= 8


async def test_an_open_breaker_sheds_then_lets_one_probe_through_after_the_cooldown() -> None:
    model = "breaker: {consecutive_failures: 1, cooldown: 30}\nretry: {attempts: 1}"
    async with gateway(one_model("a", model=model)) as gw:
        fake = gw.fake("a")
        fake.script(fail(http_error(500)), fail(http_error(500)))
        assert (await gw.chat()).status_code == 502
        shed = await gw.chat()
        assert shed.status_code == 503 and shed.json()["error"]["code"] == "no_healthy_deployment"
        assert shed.headers["retry-after"] == "30"
        gw.clock.advance(29)
        assert (await gw.chat()).headers["retry-after"] == "1"  # still open, and says so
        assert len(fake.calls) == 1

        gw.clock.advance(1)  # half-open: one probe goes through, and fails
        assert (await gw.chat()).status_code == 502
        breaker = gw.deployment("a").breaker
        assert breaker.state == "open" and breaker.reason == "probe failed"
        assert (await gw.chat()).headers["retry-after"] == "30"  # a full cooldown again

        gw.clock.advance(30)  # the next probe succeeds: closed, traffic flows
        assert [(await gw.chat()).status_code for _ in range(3)] == [200] * 3
        assert breaker.state == "closed" and len(fake.calls) == 5


async def test_half_open_lets_one_probe_at_a_time() -> None:
    model = "breaker: {consecutive_failures: 1, cooldown: 5, half_open_probes: 1}\nretry: {attempts: 1}"
    async with gateway(one_model("a", model=model)) as gw:
        gw.fake("a").script(fail(http_error(500)), reply(delay=2))  # the probe takes two seconds
        await gw.chat()
        gw.clock.advance(5)
        probe, meanwhile = await gw.clock.run(asyncio.gather(gw.request(), gw.request()))
        assert probe.status_code == 200
        assert meanwhile.status_code == 503 and meanwhile.json()["error"]["code"] == "no_healthy_deployment"
        assert len(gw.fake("a").calls) == 2 and gw.deployment("a").breaker.state == "closed"


async def test_an_error_rate_over_the_window_opens_it_and_old_failures_age_out() -> None:
    model = ("breaker: {window: 10, min_calls: 4, error_rate: 0.5, consecutive_failures: 100}\n"
             "retry: {attempts: 1}")
    async with gateway(one_model("a", model=model)) as gw:
        fake, breaker = gw.fake("a"), gw.deployment("a").breaker
        fake.script(fail(http_error(500)), fail(http_error(500)), reply(), fail(http_error(500)))
        for _ in range(3):
            await gw.chat()
        gw.clock.advance(11)  # the two failures fall out of the window
        await gw.chat()
        assert breaker.state == "closed" and breaker.window() == (1, 1)
        fake.script(reply(), fail(http_error(500)), reply(), fail(http_error(500)))
        for _ in range(4):
            await gw.chat()
        assert breaker.state == "open" and breaker.reason == "3/5 calls failed in 10s"
