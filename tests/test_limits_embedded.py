"""Rate limits and concurrency on the embedded (in-memory) counters, over real sockets."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.access_support import COMPILED, MASTER, MESSAGES, chat, config, create_key, gateway
from tests.fakes import FakeUpstream
from tokenway.http_protocol import CoalescingHttpToolsProtocol
from tokenway.policies import limits
from tokenway.stores.base import Bucket, Budget, BudgetLine, Slot
from tokenway.stores.memory import MemoryCounters


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


async def test_memory_buckets_take_all_or_nothing_and_refill() -> None:
    counters = MemoryCounters()
    rpm = Bucket("rpm:key:a", 60, "requests", "key")
    tpm = Bucket("tpm:key:a", 100, "tokens", "key")
    assert (await counters.acquire([rpm, tpm], 80)).denied is None
    denied = await counters.acquire([rpm, tpm], 80)
    assert denied.denied == 1 and denied.retry_after == pytest.approx((80 - 20) / (100 / 60), rel=0.01)
    assert int(denied.levels[0]) == 59  # the refused request took nothing from the first bucket
    counters.finish(None, [tpm], -60)  # a settle that gives tokens back
    assert (await counters.acquire([rpm, tpm], 80)).denied is None
    slot = Slot("conc:key:a", 1, "r1")
    assert (await counters.acquire([], 0, slot)).denied is None
    assert (await counters.acquire([], 0, Slot("conc:key:a", 1, "r2"))).denied == 0
    counters.finish(slot, [], 0)
    assert (await counters.acquire([], 0, Slot("conc:key:a", 1, "r3"))).denied is None
    fast = Bucket("tpm:fast", 600, "tokens", "key")  # refills 10 per second: 5 take 0.5 s
    assert (await counters.acquire([fast], 600)).denied is None
    await asyncio.sleep(0.3)
    assert (await counters.acquire([fast], 5)).denied == 0
    await asyncio.sleep(0.3)
    assert (await counters.acquire([fast], 5)).denied is None


def test_cells_refuse_without_taking_and_bound_debt_to_a_minute() -> None:
    counters = MemoryCounters()
    key_rpm = Bucket("rpm:key:c", 60, "requests", "key")
    team_tpm = Bucket("tpm:team:t", 120, "tokens", "team")
    budget = Budget(amount=0.00001, period="day")
    lines = [BudgetLine("budget:key:c:d", 10_000, 60, "key", budget),
             BudgetLine("budget:team:t:d", 1_000, 60, "team", budget)]  # nano-dollars
    cells = counters.cells([key_rpm, team_tpm], None, lines)
    now = time.monotonic()
    assert cells.take(100, now) == [pytest.approx(59), pytest.approx(20)]
    assert cells.take(30, now) is None  # the team's tokens are short: the key's request is given back
    refusal = cells.refusal(30, now)
    assert refusal.denied == 1 and refusal.levels == [pytest.approx(59), pytest.approx(20)]
    assert refusal.retry_after == pytest.approx(10 / 2)  # 10 tokens short, refilling 2 per second
    # The team's line is full the second time: the key's is left as it was.
    assert cells.reserve(800) is None and cells.reserve(800) == 1
    assert [await_committed(counters, line) for line in lines] == [800, 800]
    cells.settle(None, 10_000, -300)  # far more tokens than estimated: in debt by at most a minute's
    assert [await_committed(counters, line) for line in lines] == [500, 500]
    assert cells.refusal(0, time.monotonic()).levels[1] == pytest.approx(-120, abs=0.1)


def await_committed(counters: MemoryCounters, line: BudgetLine) -> int:
    return asyncio.run(counters.committed(line))


def test_a_changed_key_a_new_utc_day_and_an_unknown_model_each_get_a_fresh_plan(
    upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with gateway(config(upstream), tmp_path) as (base, app):
        created = create_key(base, rpm=100)
        key, key_id = created["key"], created["id"]
        assert chat(base, key).headers["x-ratelimit-limit-requests"] == "100"
        changed = httpx.patch(base + f"/admin/keys/{key_id}", json={"rpm": 200},
                              headers={"Authorization": f"Bearer {MASTER}"})
        assert changed.status_code == 200
        assert chat(base, key).headers["x-ratelimit-limit-requests"] == "200"  # the changed key's plan
        plans = app.access.rate_limits._plans
        assert set(plans) == {(key_id, "m")}
        stale = plans[(key_id, "m")][1]
        now = time.time()
        monkeypatch.setattr(limits.time, "time", lambda: now + 86_400)  # the same key, the next UTC day
        assert chat(base, key).status_code == 200
        assert plans[(key_id, "m")][1] is not stale and plans[(key_id, "m")][1].until > stale.until
        assert chat(base, key, model="no-such-model").status_code == 404
        assert set(plans) == {(key_id, "m")}  # a model the gateway does not serve is not kept
        monkeypatch.setattr(limits, "MAX_PLANS", 1)
        assert chat(base, key, model="other").status_code == 200
        assert set(plans) == {(key_id, "other")}  # the table stays within its bound


@pytest.mark.parametrize("http", [CoalescingHttpToolsProtocol, "httptools"])
def test_each_answer_on_a_kept_alive_connection_carries_its_own_limit_headers(
    upstream: FakeUpstream, tmp_path: Path, http: Any
) -> None:
    """The gateway's own server takes the x-ratelimit headers as rendered lines (no per-header
    checks); another server gets them as ordinary headers. Either way each response, streamed or
    not, carries its own, once, and a refusal on the same connection carries its own too."""
    with gateway(config(upstream), tmp_path, http=http) as (base, _):
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


@pytest.mark.skipif(COMPILED, reason="patches a method, which a compiled class does not allow")
def test_a_failing_money_settle_still_frees_the_slot_and_settles_the_tokens(
    upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with gateway(config(upstream), tmp_path) as (base, app):
        key = create_key(base, max_parallel=1, tpm=100, budget="5.00/day")["key"]  # refills 1.7 tokens/s

        def broken(*_: Any) -> int:
            raise RuntimeError("a bug in working out the cost")

        monkeypatch.setattr(app.access.budgets, "hold_settlement", broken)
        first = chat(base, key)  # its settle raises (logged), after the response
        second = chat(base, key)  # admitted: the one slot was freed all the same
    assert (first.status_code, second.status_code) == (200, 200)
    # the first request's real 13 tokens were settled against its 8-token estimate: 100 - 13 - 8 left
    # (84 had they not been), plus what refilled in between
    assert 100 - 13 - 8 <= int(second.headers["x-ratelimit-remaining-tokens"]) < 100 - 8 - 8
