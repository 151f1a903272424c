"""Rate limits and concurrency on the embedded (in-memory) counters, over real sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.access_support import MASTER, MESSAGES, chat, config, create_key, gateway
from tests.fakes import FakeUpstream


def test_rpm_limit_answers_429_with_openai_headers(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        key = create_key(base, rpm=3)["key"]
        ok = [chat(base, key) for _ in range(3)]
        limited = chat(base, key)
    assert [r.status_code for r in ok] == [200, 200, 200]
    assert ok[0].headers["x-ratelimit-limit-requests"] == "3"
    assert ok[0].headers["x-ratelimit-remaining-requests"] == "2"
    assert ok[2].headers["x-ratelimit-remaining-requests"] == "0"
    assert ok[0].headers["x-ratelimit-reset-requests"] == "20s"  # one request refills in 60/3 s
    assert limited.status_code == 429
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(limited.headers["retry-after"]) <= 20
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(upstream.seen) == 3


def test_tpm_counts_prompt_at_admission_and_completion_after(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        key = create_key(base, tpm=30)["key"]
        first = chat(base, key)  # admits on the 8-token estimate, settles the real 7 + 6 = 13
        second = chat(base, key)
        third = chat(base, key)
    assert first.status_code == 200 and first.headers["x-ratelimit-remaining-tokens"] == "22"
    assert second.status_code == 200
    assert int(second.headers["x-ratelimit-remaining-tokens"]) <= 30 - 13 - 8 + 1  # first settled at 13
    assert third.status_code == 429 and "tokens per minute" in third.json()["error"]["message"]


def test_a_prompt_larger_than_the_tpm_limit_says_so(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        key = create_key(base, tpm=20)["key"]
        r = httpx.post(base + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "m", "messages": [{"role": "user", "content": "x" * 400}]})
    assert r.status_code == 429 and r.json()["error"]["code"] == "tokens_exceeded"


def test_team_model_and_anonymous_ip_limits(upstream: FakeUpstream, tmp_path: Path) -> None:
    access = """
teams: {web: {rpm: 2}}
models: {other: {rpm: 1}}
anonymous: {rpm: 2}
"""
    with gateway(config(upstream, access), tmp_path) as (base, _):
        a = create_key(base, team="web")["key"]
        b = create_key(base, team="web")["key"]
        team = [chat(base, a).status_code, chat(base, b).status_code, chat(base, a).status_code]
        solo = create_key(base)["key"]
        model = [chat(base, solo, model="other").status_code, chat(base, solo, model="other").status_code]
    assert team == [200, 200, 429]
    assert model == [200, 429]
    with gateway(config(upstream, access), tmp_path / "open", master_key=None) as (base, _):
        anonymous = [chat(base, "whatever").status_code for _ in range(3)]
    assert anonymous == [200, 200, 429]


def test_concurrency_limit_per_key(upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.chunk_delay = 0.1  # each stream takes ~0.6 s
    with gateway(config(upstream), tmp_path) as (base, _):
        key = create_key(base, max_parallel=2)["key"]

        async def burst() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as client:
                body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
                calls = [client.post(base + "/v1/chat/completions", json=body,
                                     headers={"Authorization": f"Bearer {key}"}) for _ in range(5)]
                return [r.status_code for r in await asyncio.gather(*calls)]

        codes = asyncio.run(burst())
        after = chat(base, key).status_code  # slots were released when the streams ended
    assert sorted(codes) == [200, 200, 429, 429, 429]
    assert after == 200


def test_a_changed_key_takes_effect_at_once(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        created = create_key(base, rpm=100)
        key, key_id = created["key"], created["id"]
        assert chat(base, key).headers["x-ratelimit-limit-requests"] == "100"
        changed = httpx.patch(base + f"/admin/keys/{key_id}", json={"rpm": 200},
                              headers={"Authorization": f"Bearer {MASTER}"})
        assert changed.status_code == 200
        assert chat(base, key).headers["x-ratelimit-limit-requests"] == "200"


def test_each_answer_on_a_kept_alive_connection_carries_its_own_limit_headers(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Each response, streamed or not, carries its own x-ratelimit headers, once, and a refusal on
    the same connection carries its own too."""
    with gateway(config(upstream), tmp_path) as (base, _):
        key = create_key(base, rpm=3, tpm=1000)["key"]
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        request = {"model": "m", "messages": MESSAGES}
        first = client.post("/v1/chat/completions", json=request)
        with client.stream("POST", "/v1/chat/completions", json={**request, "stream": True}) as streamed:
            events = [line for line in streamed.iter_lines() if line.startswith("data: ")]
        third = client.post("/v1/chat/completions", json=request)
        refused = client.post("/v1/chat/completions", json=request)
        client.close()
    assert [first.status_code, streamed.status_code, third.status_code, refused.status_code] == [200, 200, 200, 429]
    assert first.json()["choices"] and events[-1] == "data: [DONE]"
    for response, left in ((first, "2"), (streamed, "1"), (third, "0"), (refused, "0")):
        assert response.headers.get_list("x-ratelimit-limit-requests") == ["3"]
        assert response.headers.get_list("x-ratelimit-remaining-requests") == [left]
        assert response.headers.get_list("x-ratelimit-limit-tokens") == ["1000"]
        assert len(response.headers.get_list("x-ratelimit-reset-tokens")) == 1
    assert refused.json()["error"]["type"] == "rate_limit_error"
