"""Workers found by DNS, over real sockets: a gateway whose model's deployments are the A records of a
name on a test DNS server. Workers added to the records start taking calls within the interval;
workers taken out stop getting new calls within it, and the calls they have finish; no request fails
while traffic runs throughout."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.discovery_fakes import DnsServer, Worker
from tests.servers import free_port, running_app
from tokenway.config import ConfigError, parse_config

INTERVAL = 0.3
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer().start()
    yield server
    server.stop()


def discovery_config(dns_port: int, port: int, model: str = "served-model") -> str:
    return f"""
models:
  - name: m
    deployments:
      - provider: openai
        model: {model}
        discovery: {{dns: workers.test, port: {port}, interval_s: {INTERVAL}, nameserver: "127.0.0.1:{dns_port}"}}
"""


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> float:
    """Seconds until ``check()`` held; fails the test after ``timeout``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "condition not met in time"
        time.sleep(0.01)
    return time.monotonic() - started


def workers_of(app: object, model: str = "m") -> list[str]:
    return [d.name for d in app.models.lookup(model)]  # type: ignore[attr-defined]


class Traffic:
    """Clients calling the gateway in a loop, half streamed, until stopped; every outcome kept."""

    def __init__(self, base: str, clients: int = 4) -> None:
        self._base = base
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(clients)
        self._runs = [self._pool.submit(self._loop, i % 2 == 0) for i in range(clients)]
        self.outcomes: list[tuple[int, bool]] = []  # (status, finished whole)

    def _loop(self, stream: bool) -> None:
        with httpx.Client(timeout=20) as client:
            deadline = time.monotonic() + 60  # bounded even if the test forgets to stop it
            while not self._stop.is_set() and time.monotonic() < deadline:
                body = {"model": "m", "messages": MESSAGES, "stream": stream}
                if stream:
                    with client.stream("POST", self._base + "/v1/chat/completions", json=body) as r:
                        lines = [line for line in r.iter_lines() if line]
                    self.outcomes.append((r.status_code, bool(lines) and lines[-1] == "data: [DONE]"))
                else:
                    r = client.post(self._base + "/v1/chat/completions", json=body)
                    self.outcomes.append((r.status_code, r.status_code == 200 and "choices" in r.json()))

    def stop(self) -> list[tuple[int, bool]]:
        self._stop.set()
        for run in self._runs:
            run.result(timeout=30)
        self._pool.shutdown()
        return self.outcomes


def test_workers_join_and_leave_as_the_records_change_with_no_failed_request(dns_server: DnsServer) -> None:
    port = free_port()
    a = Worker("127.0.0.2", port).start()
    b = Worker("127.0.0.3", port).start()
    dns_server.set("workers.test", ["127.0.0.2"])
    try:
        with running_app(discovery_config(dns_server.port, port)) as (base, app):
            wait_for(lambda: len(workers_of(app)) == 1)
            assert workers_of(app) == [f"m#0@127.0.0.2:{port}"]
            traffic = Traffic(base)
            wait_for(lambda: a.started >= 10)

            dns_server.set("workers.test", ["127.0.0.2", "127.0.0.3"])  # a worker added
            joined = wait_for(lambda: b.started > 0)
            assert joined < INTERVAL + 2.0  # one interval, plus the /models check and a call to land (slack: CI)
            assert sorted(workers_of(app)) == [f"m#0@127.0.0.2:{port}", f"m#0@127.0.0.3:{port}"]

            a.chunk_delay = 0.2  # a's streams now last ~1.2 s: some are running when it leaves
            wait_for(lambda: a.active >= 2)
            dns_server.set("workers.test", ["127.0.0.3"])  # a worker removed
            left = wait_for(lambda: workers_of(app) == [f"m#0@127.0.0.3:{port}"])
            assert left < INTERVAL + 2.0
            in_flight_when_removed = a.active
            started_on_a = a.started
            time.sleep(3 * INTERVAL)
            assert a.started == started_on_a  # no new call went to the removed worker
            wait_for(lambda: a.active == 0)  # and the calls it had ran to their end
            deployments = httpx.get(base + "/admin/deployments").json()
            decisions = httpx.get(base + "/admin/routing").json()["decisions"]
            outcomes = traffic.stop()
    finally:
        a.stop()
        b.stop()
    assert in_flight_when_removed >= 1
    assert outcomes and all(status == 200 and whole for status, whole in outcomes), \
        [o for o in outcomes if o != (200, True)]
    assert b.started > 0 and a.finished == a.started
    assert decisions["discovery.joined"] == 2 and decisions["discovery.left"] == 1
    (found,) = deployments["discovery"]["m"]
    assert found["source"] == "dns:workers.test"
    assert found["workers"] == [f"m#0@127.0.0.3:{port}"]


def test_a_worker_joins_only_once_its_models_list_the_model(dns_server: DnsServer) -> None:
    port = free_port()
    worker = Worker("127.0.0.2", port, models=["other-model"]).start()
    dns_server.set("workers.test", ["127.0.0.2"])
    try:
        with running_app(discovery_config(dns_server.port, port)) as (base, app):
            # found, but it serves another model (as a vLLM still loading, or a wrong name, would)
            wait_for(lambda: bool(httpx.get(base + "/admin/deployments").json()["discovery"]["m"][0]["waiting"]))
            refused = httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
            waiting = httpx.get(base + "/admin/deployments").json()["discovery"]["m"][0]["waiting"]
            worker.models = ["served-model"]
            wait_for(lambda: len(workers_of(app)) == 1)
            served = httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
    finally:
        worker.stop()
    assert refused.status_code == 503 and "retry-after" in refused.headers
    assert "no worker" in refused.json()["error"]["message"].lower()
    assert "other-model" in waiting[f"127.0.0.2:{port}"]
    assert served.status_code == 200


def test_a_failing_lookup_keeps_the_workers_known_and_nxdomain_removes_them(dns_server: DnsServer) -> None:
    port = free_port()
    worker = Worker("127.0.0.2", port).start()
    dns_server.set("workers.test", ["127.0.0.2"])
    try:
        with running_app(discovery_config(dns_server.port, port)) as (_, app):
            wait_for(lambda: len(workers_of(app)) == 1)
            dns_server.silent = True  # lookups time out: a DNS outage must not empty the model
            time.sleep(4 * INTERVAL + 1.0)
            kept = workers_of(app)
            dns_server.forget("workers.test")
            dns_server.silent = False
            wait_for(lambda: workers_of(app) == [])  # the name is gone (NXDOMAIN): so are its workers
    finally:
        worker.stop()
    assert kept == [f"m#0@127.0.0.2:{port}"]


@pytest.mark.parametrize(("block", "message"), [
    ("{dns: w.test}", "needs the workers' port"),
    ("{port: 8000}", "exactly one source"),
    ("{dns: w.test, port: 8000, kubernetes: {service: vllm}}", "exactly one source"),
    ("{dns: w.test, port: 8000, nameserver: dns.example}", "give an IP address"),
    ("{dns: w.test, port: 8000, intervl_s: 5}", "Extra inputs are not permitted"),
])
def test_discovery_config_errors_name_the_line(block: str, message: str) -> None:
    text = f"models:\n  - name: m\n    deployments:\n      - provider: openai\n        discovery: {block}\n"
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "tokenway.yaml")
    assert str(raised.value).startswith("tokenway.yaml:5: models[0].deployments[0].discovery")
    assert message in str(raised.value)


def test_api_base_and_discovery_do_not_mix() -> None:
    text = ("models:\n  - name: m\n    deployments:\n      - provider: openai\n        api_base: http://x/v1\n"
            "        discovery: {dns: w.test, port: 8000}\n")
    with pytest.raises(ConfigError, match="remove 'api_base'"):
        parse_config(text, "tokenway.yaml")
