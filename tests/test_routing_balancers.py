"""Balancing strategies (unit), and engine-aware routing and health checks over real sockets."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

from tests.fakes import FakeUpstream
from tests.servers import running_gateway
from tests.test_resilience_retries import chat, decisions
from tokenway.config import DeploymentConfig
from tokenway.deployments import Deployment, EngineLoad
from tokenway.providers.base import Call
from tokenway.routing.balancers import EngineAware, LatencyP2C, LeastInFlight, PrefixAffinity, WeightedRoundRobin
from tokenway.routing.engine_metrics import engine_load, parse_gauges
from tokenway.routing.options import RoutingConfig

CALL = Call("chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})


def deployments(*weights: float) -> list[Deployment]:
    return [Deployment(DeploymentConfig(provider="openai", api_base="http://x/v1", name=f"d{i}", weight=w), None)  # type: ignore[arg-type]
            for i, w in enumerate(weights)]


def test_weighted_round_robin_is_smooth_and_exact() -> None:
    group = deployments(3, 1)
    balancer = WeightedRoundRobin()
    picks = [balancer.pick(group, CALL)[0].name for _ in range(8)]
    assert picks.count("d0") == 6 and picks.count("d1") == 2
    assert "d1d1" not in "".join(picks)


def test_least_in_flight() -> None:
    group = deployments(1, 1, 1)
    group[0].in_flight, group[1].in_flight, group[2].in_flight = 4, 1, 2
    assert LeastInFlight().pick(group, CALL) == (group[1], "least_in_flight")


def test_p2c_prefers_the_faster_worker() -> None:
    group = deployments(1, 1)
    group[0].ttft_ewma, group[1].ttft_ewma = 0.05, 0.5
    picks = Counter(LatencyP2C().pick(group, CALL)[0].name for _ in range(200))
    assert picks["d0"] == 200  # with two candidates both are always compared
    group[0].in_flight = 20  # fast but swamped: 0.05 x 21 > 0.5 x 1
    assert LatencyP2C().pick(group, CALL)[0].name == "d1"


def test_engine_aware_reads_queue_and_kv_use() -> None:
    group = deployments(1, 1)
    group[0].engine = EngineLoad(waiting=6, running=8, kv_usage=0.5, at=0, in_flight_at_scrape=0)
    group[1].engine = EngineLoad(waiting=0, running=8, kv_usage=0.5, at=0, in_flight_at_scrape=0)
    assert EngineAware().pick(group, CALL)[0].name == "d1"
    group[1].in_flight = 20  # we sent it 20 calls since the last scrape
    assert EngineAware().pick(group, CALL)[0].name == "d0"


def test_prefix_affinity_sticks_until_the_worker_is_overloaded() -> None:
    group = deployments(1, 1, 1, 1)
    balancer = PrefixAffinity(RoutingConfig(strategy="prefix", prefix_chars=64, affinity_slack=3))
    shared = "You are a helpful assistant. " * 10

    def call(user: str) -> Call:
        return Call("chat", {"model": "m", "messages": [{"role": "system", "content": shared},
                                                        {"role": "user", "content": user}]})

    first, reason = balancer.pick(group, call("a"))
    assert reason == "prefix_affinity"
    assert all(balancer.pick(group, call(u))[0] is first for u in "bcdefg")  # same prefix, same worker
    first.in_flight = 10  # overloaded beyond the slack: spill, to the same second choice every time
    spills = {balancer.pick(group, call(u)) for u in "hij"}
    assert len(spills) == 1 and next(iter(spills))[1] == "prefix_spill"


def test_metrics_parsing_for_vllm_and_sglang() -> None:
    vllm = parse_gauges(
        '# HELP vllm:num_requests_waiting x\nvllm:num_requests_waiting{model_name="a"} 3.0\n'
        'vllm:num_requests_waiting{model_name="b"} 1\nvllm:num_requests_running{model_name="a"} 7\n'
        'vllm:gpu_cache_usage_perc{model_name="a"} 0.25\n'
    )
    load = engine_load("vllm", vllm, in_flight=2)
    assert load is not None and (load.waiting, load.running, load.kv_usage) == (4.0, 7.0, 0.25)
    both = parse_gauges("vllm:num_requests_running 1\nvllm:kv_cache_usage_perc 0.5\nvllm:gpu_cache_usage_perc 0.9\n")
    assert engine_load("vllm", both, 0).kv_usage == 0.5  # type: ignore[union-attr]  # the current name wins
    sglang = parse_gauges('sglang:num_queue_reqs{tp_rank="0"} 5\nsglang:num_running_reqs 2\nsglang:token_usage 0.8\n')
    load = engine_load("sglang", sglang, 0)
    assert load is not None and (load.waiting, load.running, load.kv_usage) == (5.0, 2.0, 0.8)
    assert engine_load("vllm", sglang, 0) is None


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``check()`` holds: the probes and scrapes run on their own schedule."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the gateway's view of its deployments never changed"
        time.sleep(0.02)


def deployment_states(base: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    states = httpx.get(base + "/admin/deployments", headers=headers).json()["models"]["m"]
    return {d["name"]: d for d in states}


def _engine_yaml(upstream: FakeUpstream) -> str:
    rows = "".join(
        f"      - {{provider: openai, name: {w}, api_base: '{upstream.url(w)}', "
        f"engine_metrics: {{kind: vllm, interval: 0.05, metrics_url: 'http://127.0.0.1:{upstream.port}/{w}/metrics'}}}}\n"
        for w in ("w1", "w2")
    )
    return f"models:\n  - name: m\n    routing: {{strategy: engine}}\n    deployments:\n{rows}"


def test_engine_aware_routing_follows_the_scraped_queues(upstream: FakeUpstream) -> None:
    busy = "vllm:num_requests_waiting 12\nvllm:num_requests_running 30\nvllm:kv_cache_usage_perc 0.95\n"
    idle = "vllm:num_requests_waiting 0\nvllm:num_requests_running 1\nvllm:kv_cache_usage_perc 0.1\n"
    upstream.gauges.update(w1=busy, w2=idle)
    with running_gateway(_engine_yaml(upstream), master_key="sk-admin") as base:
        auth = {"authorization": "Bearer sk-admin"}

        def scraped(w1: float, w2: float) -> bool:
            state = deployment_states(base, auth)
            return [(state[w]["engine"] or {}).get("waiting") for w in ("w1", "w2")] == [w1, w2]

        eventually(lambda: scraped(12, 0))
        for _ in range(5):
            assert httpx.post(base + "/v1/chat/completions", headers=auth, timeout=10,
                              json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
        upstream.gauges.update(w1=idle, w2=busy)
        eventually(lambda: scraped(0, 12))
        for _ in range(5):
            httpx.post(base + "/v1/chat/completions", headers=auth, timeout=10,
                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert httpx.get(base + "/admin/deployments").status_code == 401
        state = httpx.get(base + "/admin/deployments", headers=auth).json()["models"]["m"]
        stats = httpx.get(base + "/admin/routing", headers=auth).json()["decisions"]
    paths = [s.path.split("/")[1] for s in upstream.seen]
    assert paths == ["w2"] * 5 + ["w1"] * 5
    assert state[1]["engine"]["waiting"] == 12 and stats["pick.engine_least_loaded"] == 10


def test_failing_health_checks_take_a_deployment_out_and_back(upstream: FakeUpstream) -> None:
    check = "health_check: {interval: 0.05, unhealthy_after: 1, healthy_after: 1}"
    yaml = (f"models:\n  - name: m\n    deployments:\n"
            f"      - {{provider: openai, name: a, api_base: '{upstream.url('a')}', {check}}}\n"
            f"      - {{provider: openai, name: b, api_base: '{upstream.url('b')}', {check}}}\n")
    upstream.down.add("a")
    with running_gateway(yaml) as base:
        eventually(lambda: not deployment_states(base)["a"]["healthy"])
        for _ in range(4):
            assert chat(base).status_code == 200
        upstream.down.clear()
        eventually(lambda: deployment_states(base)["a"]["healthy"])
        for _ in range(4):
            assert chat(base).status_code == 200
        stats = decisions(base)
    paths = [s.path.split("/")[1] for s in upstream.seen if "chat" in s.path]
    assert paths[:4] == ["b"] * 4 and sorted(paths[4:]) == ["a", "a", "b", "b"]
    assert stats["skip.unhealthy"] == 4
