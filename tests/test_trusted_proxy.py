"""The client's address behind a proxy: X-Forwarded-For / X-Real-IP believed only from trusted proxies.

Per-IP limits (anonymous callers) and the request log must see the client, not nginx; a client that is
not a trusted proxy cannot pick its own address with the headers.
"""

from __future__ import annotations

import json
from ipaddress import ip_network

import httpx
import pytest

from tests.fakes import FakeUpstream
from tests.servers import running_app
from tests.test_gateway_openai import MESSAGES, config
from tokenway.api.client_address import TrustedProxies

PROXIES = TrustedProxies([ip_network("127.0.0.1/32"), ip_network("10.0.0.0/8")])


def headers(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), value.encode()) for name, value in pairs]


@pytest.mark.parametrize(("peer", "sent", "client"), [
    ("127.0.0.1", [("x-forwarded-for", "203.0.113.7")], "203.0.113.7"),
    # the client's own entries stand left of what the proxies appended: the walk stops before them
    ("127.0.0.1", [("x-forwarded-for", "1.2.3.4, 203.0.113.7, 10.1.2.3")], "203.0.113.7"),
    ("127.0.0.1", [("x-forwarded-for", "1.2.3.4"), ("x-forwarded-for", "203.0.113.7")], "203.0.113.7"),
    ("127.0.0.1", [("x-real-ip", "203.0.113.9")], "203.0.113.9"),
    ("127.0.0.1", [("x-forwarded-for", "2001:db8::1")], "2001:db8::1"),
    ("127.0.0.1", [], "127.0.0.1"),  # a trusted proxy that forwarded nothing is the client
    ("::ffff:10.0.0.5", [("x-forwarded-for", "203.0.113.7")], "203.0.113.7"),  # an IPv4 peer on a "::" listener
    ("127.0.0.1", [("x-forwarded-for", "10.0.0.5, 10.0.0.6")], "10.0.0.5"),  # all trusted: the first hop
    ("127.0.0.1", [("x-forwarded-for", "not-an-ip")], "127.0.0.1"),
    ("198.51.100.1", [("x-forwarded-for", "203.0.113.7"), ("x-real-ip", "203.0.113.9")], "198.51.100.1"),
])
def test_the_walk_from_the_right(peer: str, sent: list[tuple[str, str]], client: str) -> None:
    assert PROXIES.client(peer, headers(*sent)) == client


def test_no_trusted_proxies_is_no_walk() -> None:
    assert TrustedProxies.of([]) is None


def request_log(out: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "request"]


def chat(base: str, forwarded_for: str) -> int:
    r = httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES},
                   headers={"x-forwarded-for": forwarded_for}, timeout=10)
    return r.status_code


ANONYMOUS_ONE_PER_MINUTE = "access:\n  anonymous: {rpm: 1}\n"


def test_per_ip_limits_and_the_log_see_the_client_behind_a_trusted_proxy(
    upstream: FakeUpstream, capfd: pytest.CaptureFixture[str]
) -> None:
    with running_app(config(upstream, extra=ANONYMOUS_ONE_PER_MINUTE), trusted_proxies="127.0.0.1/32") as (base, _):
        statuses = [chat(base, "203.0.113.7"), chat(base, "203.0.113.8"), chat(base, "203.0.113.7")]
    assert statuses == [200, 200, 429]  # one bucket per client, not one for the proxy
    logged = [line["client"] for line in request_log(capfd.readouterr().out)]
    assert logged == ["203.0.113.7", "203.0.113.8", "203.0.113.7"]


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(
    upstream: FakeUpstream, capfd: pytest.CaptureFixture[str]
) -> None:
    # the default (no trusted proxies), and a list that does not hold the peer (127.0.0.1)
    for trusted in ("", "10.0.0.0/8"):
        with running_app(config(upstream, extra=ANONYMOUS_ONE_PER_MINUTE), trusted_proxies=trusted) as (base, _):
            statuses = [chat(base, "203.0.113.7"), chat(base, "203.0.113.8")]
        assert statuses == [200, 429]  # a new address in the header is no new bucket
        assert [line["client"] for line in request_log(capfd.readouterr().out)] == ["127.0.0.1", "127.0.0.1"]
