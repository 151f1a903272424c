"""Releases: sticky weighted splits between versions of a model, and shadow traffic to a candidate.

The split is checked in process over 10,000 simulated callers (within ±2% of each weight), then over
real sockets with the ``openai`` SDK: a caller named by ``user``, by the x-tokenway-session header or
by its key always lands on the same version, stream or not; every log line and the release metrics
name the version. Shadows: a share of requests is copied to a candidate whose answer is discarded and
measured beside the primary's; a failing or hanging candidate never fails or holds the primary, and
copies past the bound are skipped.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fakes import FakeUpstream
from tests.servers import running_app
from tokenway.config import ConfigError, parse_config
from tokenway.context import RequestContext
from tokenway.providers.base import Answer, Call, Completion
from tokenway.releases.cli import main as releases_main
from tokenway.releases.policy import ReleaseSplit
from tokenway.releases.record import ReleaseRecord

WHOLE = "Hello from the fake upstream."


def released(upstream: str, weights: tuple[float, float, float] = (70, 20, 10), shadow: str = "") -> str:
    return f"""\
models:
  - name: chat
    deployments: [{{name: chat-stable, api_base: "{upstream}/stable/v1"}}]
    release:
      versions:
        - {{name: stable, model: chat, weight: {weights[0]}}}
        - {{name: canary, model: chat-canary, weight: {weights[1]}}}
        - {{name: next, model: chat-next, weight: {weights[2]}}}
{shadow}
  - name: chat-canary
    deployments: [{{name: chat-canary-a, api_base: "{upstream}/canary/v1"}}]
  - name: chat-next
    deployments: [{{name: chat-next-a, api_base: "{upstream}/next/v1"}}]
  - name: candidate
    deployments: [{{name: candidate-a, api_base: "{upstream}/candidate/v1"}}]
  - name: candidate-down
    retry: {{attempts: 1}}
    deployments: [{{name: candidate-down-a, api_base: "{upstream}/status500/v1"}}]
  - name: candidate-hang
    deployments: [{{name: candidate-hang-a, api_base: "{upstream}/hang/v1"}}]
"""


def served_by(policy: ReleaseSplit, ctx: RequestContext, body: dict[str, Any]) -> str:
    """The model the policy hands the call on to (the policy never awaits anything else: no loop needed)."""
    seen: list[str] = []

    async def upstream(_: RequestContext, call: Call) -> Answer:
        seen.append(call.body["model"])
        return Completion(b"{}")

    step = policy(ctx, Call("chat", {"messages": [], **body}), upstream).__await__()
    with pytest.raises(StopIteration):
        next(step)
    return seen[0]


@pytest.mark.parametrize("weights", [(70, 20, 10), (1, 1, 1), (98, 1, 1)])
def test_splits_follow_the_weights_over_10000_callers(weights: tuple[float, float, float]) -> None:
    policy = ReleaseSplit(parse_config(released("http://x", weights)), ReleaseRecord())
    counts = Counter(served_by(policy, RequestContext("r", "chat"), {"model": "chat", "user": f"user-{i}"})
                     for i in range(10_000))
    shares = {m: counts[m] / 10_000 for m in ("chat", "chat-canary", "chat-next")}
    expected = dict(zip(("chat", "chat-canary", "chat-next"), (w / sum(weights) for w in weights), strict=True))
    assert all(abs(shares[m] - expected[m]) <= 0.02 for m in shares), (shares, expected)


def test_a_caller_stays_and_a_weight_change_moves_only_the_slice_that_changed_hands() -> None:
    before = ReleaseSplit(parse_config(released("http://x", (80, 10, 10))), ReleaseRecord())
    after = ReleaseSplit(parse_config(released("http://x", (70, 20, 10))), ReleaseRecord())
    moved = 0
    for i in range(2000):
        body = {"model": "chat", "user": f"u{i}"}
        first = served_by(before, RequestContext("r", "chat"), body)
        assert served_by(before, RequestContext("r2", "chat"), body) == first  # the same caller, the same version
        now = served_by(after, RequestContext("r3", "chat"), body)
        if now != first:
            assert (first, now) == ("chat", "chat-canary")  # only stable -> canary, the 10% that changed hands
            moved += 1
    assert 0.07 < moved / 2000 < 0.13


def test_the_identity_is_user_then_key_then_session() -> None:
    policy = ReleaseSplit(parse_config(released("http://x", (1, 1, 1))), ReleaseRecord())

    def version(ctx: RequestContext, body: dict[str, Any]) -> set[str]:
        return {served_by(policy, ctx, {"model": "chat", **body}) for _ in range(20)}

    assert len(version(RequestContext("r", "chat", api_key="k1", session="s"), {"user": "ann"})) == 1
    assert len(version(RequestContext("r", "chat", api_key="k1"), {})) == 1
    assert len(version(RequestContext("r", "chat", session="s1"), {})) == 1
    with_key = {served_by(policy, RequestContext("r", "chat", api_key=f"k{i}", session="same"), {"model": "chat"})
                for i in range(60)}
    assert len(with_key) == 3  # the key comes before the session
    nobody = {served_by(policy, RequestContext("r", "chat"), {"model": "chat"}) for _ in range(60)}
    assert len(nobody) == 3  # no identity: placed at random each time


def test_release_errors_name_the_line() -> None:
    text = released("http://x").replace("model: chat-next, weight", "model: chat-gone, weight")
    with pytest.raises(ConfigError) as error:
        parse_config(text, "tokenway.yaml")
    assert str(error.value).startswith("tokenway.yaml:8: models[0].release.versions[2].model:"), str(error.value)
    assert "'chat-gone' is not a configured model" in str(error.value)
    with pytest.raises(ConfigError, match=r"tokenway.yaml:\d+: models\[0\].release.versions\[1\].weight"):
        parse_config(released("http://x", (1, 0, 1)), "tokenway.yaml")


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(first_delay=0.0, chunk_delay=0.0).start()
    yield fake
    fake.stop()


def versions_seen(upstream: FakeUpstream, **match: str) -> Counter[str]:
    """Which version's upstream (the path's first part) saw the requests whose body has ``match``."""
    return Counter(s.path.split("/")[1] for s in upstream.seen
                   if all(s.body.get(k) == v for k, v in match.items()) and s.path.split("/")[1] != "candidate")


def test_stickiness_over_real_sockets(upstream: FakeUpstream, capfd: pytest.CaptureFixture[str]) -> None:
    base_url = f"http://127.0.0.1:{upstream.port}"
    with running_app(released(base_url, (1, 1, 1))) as (base, _):
        client = openai.OpenAI(base_url=base + "/v1", api_key="anything", max_retries=0)
        for i in range(30):
            for stream in (False, True, False):
                messages = [{"role": "user", "content": f"from user {i}"}]
                if stream:
                    chunks = client.chat.completions.create(model="chat", messages=messages,  # type: ignore[arg-type]
                                                            user=f"user-{i}", stream=True)
                    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == WHOLE
                else:
                    answer = client.chat.completions.create(model="chat", messages=messages,  # type: ignore[arg-type]
                                                            user=f"user-{i}")
                    assert answer.choices[0].message.content == WHOLE
        per_user = [versions_seen(upstream, user=f"user-{i}") for i in range(30)]
        assert all(len(seen) == 1 and sum(seen.values()) == 3 for seen in per_user), per_user
        assert len({next(iter(seen)) for seen in per_user}) == 3  # 30 callers, three versions all in use
        sessions = {}
        for s in range(10):
            for _ in range(3):
                client.chat.completions.create(model="chat", messages=[{"role": "user", "content": f"s{s}"}],
                                               extra_headers={"x-tokenway-session": f"session-{s}"})
        for s in range(10):
            seen = Counter(x.path.split("/")[1] for x in upstream.seen
                           if x.body["messages"][0]["content"] == f"s{s}")
            assert len(seen) == 1, seen
            sessions[s] = next(iter(seen))
        view = httpx.get(base + "/admin/releases").json()["models"]["chat"]
        metrics = httpx.get(base + "/metrics").text
    assert sum(v.get("requests", 0) for v in view["versions"]) == 120
    assert [v["share"] for v in view["versions"]] == [0.3333, 0.3333, 0.3333]
    assert 'tokenway_release_requests_total{model="chat",role="primary",version="canary"}' in metrics
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["event"] == "request"]
    assert len(requests) == 120 and all(line["release"] == "chat" for line in requests)
    assert {line["version"] for line in requests} == {"stable", "canary", "next"}
    by_version = {"stable": "chat", "canary": "chat-canary", "next": "chat-next"}
    assert all(line["model"] == by_version[line["version"]] for line in requests)  # and so every metric's label


def shadowed(base_url: str, model: str, percent: int = 100, bound: int = 16) -> str:
    block = f"      shadow: {{model: {model}, percent: {percent}, max_concurrent: {bound}}}"
    return released(base_url, (1, 0.0001, 0.0001), shadow=block)


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_shadows_are_measured_beside_the_primary(upstream: FakeUpstream, capsys: pytest.CaptureFixture[str]) -> None:
    with running_app(shadowed(f"http://127.0.0.1:{upstream.port}", "candidate", percent=50)) as (base, _):
        client = openai.OpenAI(base_url=base + "/v1", api_key="anything", max_retries=0)
        for i in range(40):
            client.chat.completions.create(model="chat", messages=[{"role": "user", "content": f"q{i}"}],
                                           user="one-user", stream=i % 2 == 0)

        def view() -> dict[str, Any]:
            return dict(httpx.get(base + "/admin/releases").json()["models"]["chat"])

        wait_for(lambda: view()["shadow"]["by_version"].get("stable", {}).get("requests", 0) > 0
                 and httpx.get(base + "/admin/releases").json()["shadows_in_flight"] == 0)
        shadow = view()["shadow"]["by_version"]["stable"]
        primary = view()["versions"][0]
        capsys.readouterr()
        assert releases_main(["--base-url", base]) == 0
        # the server in this process logs JSON lines to the same stdout: the table is the rest
        table = [line.split() for line in capsys.readouterr().out.splitlines() if not line.startswith("{")]
    copies = [s for s in upstream.seen if s.path.startswith("/candidate/")]
    assert 10 <= len(copies) <= 30 and shadow["requests"] == len(copies)  # about half of 40, by request id
    assert all("stream" not in s.body and s.body["model"] == "candidate" for s in copies)
    assert primary["requests"] == 40 and primary["errors"] == 0
    assert shadow["errors"] == 0 and shadow["completion_tokens"] > 0 and shadow["latency_ms"]["p99"] is not None
    assert shadow["model"] == "candidate" and primary["model"] == "chat"
    assert table[0][:4] == ["model", "version", "role", "serves"]
    assert table[1][:6] == ["chat", "stable", "primary", "chat", "100.0%", "40"]
    assert table[4][:6] == ["chat", "stable", "shadow", "(50%)", "candidate", "-"]
    assert table[4][6] == str(len(copies))


def test_a_failing_or_hanging_shadow_never_touches_the_primary(upstream: FakeUpstream) -> None:
    base_url = f"http://127.0.0.1:{upstream.port}"
    with running_app(shadowed(base_url, "candidate-down")) as (base, _):
        client = openai.OpenAI(base_url=base + "/v1", api_key="anything", max_retries=0)
        for i in range(5):
            answer = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": f"{i}"}])
            assert answer.choices[0].message.content == WHOLE
        wait_for(lambda: httpx.get(base + "/admin/releases").json()["models"]["chat"]["shadow"]["by_version"]
                 .get("stable", {}).get("errors") == 5)
    with running_app(shadowed(base_url, "candidate-hang", bound=2)) as (base, _):
        client = openai.OpenAI(base_url=base + "/v1", api_key="anything", max_retries=0)
        started = time.perf_counter()
        for i in range(10):
            answer = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": f"{i}"}])
            assert answer.choices[0].message.content == WHOLE
        assert time.perf_counter() - started < 5  # the shadows hang for 30 s each; the primaries did not wait
        view = httpx.get(base + "/admin/releases").json()
        assert view["shadows_in_flight"] == 2 and view["models"]["chat"]["shadow"]["skipped"] == 8
    # leaving the block stopped the server: the hanging shadows were cancelled, not waited for
