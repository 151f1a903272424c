"""GET /admin/status: what an operator reads first; the master key guards it."""

from __future__ import annotations

import httpx

from tests.fakes import FakeUpstream
from tests.servers import running_gateway
from tests.test_gateway_openai import MESSAGES, config
from tokenway import __version__
from tokenway.config import parse_config


def test_status_needs_the_master_key_and_describes_the_gateway(upstream: FakeUpstream) -> None:
    yaml = config(upstream)
    with running_gateway(yaml, master_key="sk-admin") as base:
        httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES},
                   headers={"authorization": "Bearer sk-admin"})
        anonymous = httpx.get(base + "/admin/status")
        wrong = httpx.get(base + "/admin/status", headers={"authorization": "Bearer nope"})
        status = httpx.get(base + "/admin/status", headers={"authorization": "Bearer sk-admin"}).json()
    assert anonymous.status_code == 401 and wrong.status_code == 403
    assert status["version"] == __version__
    assert status["config_hash"] == parse_config(yaml).digest()
    assert status["ready"] is True and status["draining"] is False
    (deployment,) = status["models"]["m"]
    assert deployment["name"] == "m#0" and deployment["breaker"]["state"] == "closed"
    assert status["queues"] == {"m": 0}
    assert status["routing_decisions"]["pick.round_robin"] == 1
