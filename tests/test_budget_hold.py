"""The budget reservation taken at admission, with the rate limits, in one store call.

Admission reserves the worst case at the model's dearest deployment in the same atomic step that
takes the rate limits; an attempt draws on it, a fallback to a dearer model tops it up, and it is
settled once when the request ends (a cache hit gives it all back).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.access_support import MASTER, REDIS, RESERVED_COST, SERVED_COST, Held, chat, create_key, gateway
from tests.fakes import FakeUpstream
from tokenway.stores.base import Bucket, Budget, BudgetLine, Counters
from tokenway.stores.leases import TTL_S
from tokenway.stores.memory import MemoryCounters
from tokenway.stores.redis import RedisCounters

DEAR = 10  # the dear model's price is ten times the cheap one's


@pytest.fixture(params=["memory", "redis"])
async def counters(request: pytest.FixtureRequest) -> AsyncIterator[Counters]:
    store: Counters = MemoryCounters() if request.param == "memory" else (
        RedisCounters(REDIS, prefix=f"tw-test-{secrets.token_hex(4)}:"))
    yield store
    await store.aclose()


async def test_admission_reserves_with_the_limits_or_not_at_all(counters: Counters) -> None:
    rpm = Bucket("rpm:key:h", 4, "requests", "key")
    budget = Budget(amount=0.001, period="day")  # 1,000,000 nano-dollars
    line = BudgetLine("budget:key:h:d", budget.nanos, 60, "key", budget)
    hold = Held([line], 400_000)
    outcomes = [await counters.acquire([rpm], 0, None, hold) for _ in range(3)]
    assert [(o.denied, o.held) for o in outcomes] == [(None, True), (None, True), (None, False)]
    assert await counters.committed(line) == 800_000  # the third did not fit and took no money
    assert outcomes[2].levels[0] == pytest.approx(1, abs=0.01)  # ... but it did take its request
    assert (await counters.acquire([rpm], 0, None, Held([line], 100_000))).held
    refused = await counters.acquire([rpm], 0, None, Held([line], 100_000))
    assert refused.denied == 0 and not refused.held  # limited: nothing is reserved
    assert await counters.committed(line) == 900_000
    assert (await counters.acquire([], 0, None, Held([line], 100_000))).held  # a budget alone
    assert await counters.committed(line) == 1_000_000


def _priced_models(upstream: FakeUpstream, budget_nanos: int) -> str:
    price = "price: {{input_per_1m: {0}, output_per_1m: {1}}}"
    return f"""
models:
  - name: cheap
    fallbacks: [dear]
    retry: {{attempts: 2, backoff_base: 0}}
    deployments:
      - {{provider: openai, api_base: '{upstream.url("status500")}', {price.format(1.0, 2.0)}}}
  - name: dear
    deployments:
      - {{provider: openai, api_base: '{upstream.url("ok")}', {price.format(1.0 * DEAR, 2.0 * DEAR)}}}
access:
  keys_refresh_s: 0.2
  teams:
    t: {{budget: {{amount: {budget_nanos / 1e9}, period: total}}}}
"""


def _committed(base: str, key_id: str) -> float:
    state = httpx.get(f"{base}/admin/keys/{key_id}", headers={"Authorization": f"Bearer {MASTER}"}).json()
    return round(state["budgets"][0]["committed_usd"] * 1e9)


def test_a_fallback_to_a_dearer_model_tops_the_reservation_up(upstream: FakeUpstream, tmp_path: Path) -> None:
    # Exactly one reservation at the dear price: admission holds the cheap one, the fallback adds the rest.
    with gateway(_priced_models(upstream, DEAR * RESERVED_COST), tmp_path) as (base, _):
        key = create_key(base, team="t")
        first = chat(base, key["key"], model="cheap", max_tokens=6)
        after_first = _committed(base, key["id"])
        second = chat(base, key["key"], model="cheap", max_tokens=6)
        after_second = _committed(base, key["id"])
    assert first.status_code == 200
    assert after_first == DEAR * SERVED_COST  # settled to what the dear model's answer cost
    assert second.status_code == 429 and second.json()["error"]["code"] == "insufficient_quota"
    assert after_second == DEAR * SERVED_COST  # the refused request gave everything back


def test_a_top_up_that_does_not_fit_is_refused_and_returned(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(_priced_models(upstream, 5 * RESERVED_COST), tmp_path) as (base, _):
        key = create_key(base, team="t")
        answer = chat(base, key["key"], model="cheap", max_tokens=6)
        committed = _committed(base, key["id"])
    assert answer.status_code == 429 and answer.json()["error"]["code"] == "insufficient_quota"
    assert committed == 0


def test_a_cache_hit_is_served_on_a_spent_budget_and_returns_its_reservation(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    yaml = f"""
models:
  - name: m
    cache: {{enabled: true}}
    deployments:
      - {{provider: openai, api_base: '{upstream.url("ok")}', price: {{input_per_1m: 1.0, output_per_1m: 2.0}}}}
access:
  keys_refresh_s: 0.2
"""
    with gateway(yaml, tmp_path) as (base, _):
        key = create_key(base, budget={"amount": 2 * RESERVED_COST / 1e9, "period": "total"})
        fresh = [chat(base, key["key"], max_tokens=6, temperature=0, seed=i) for i in range(2)]
        spent = _committed(base, key["id"])
        hit = chat(base, key["key"], max_tokens=6, temperature=0, seed=0)
        miss = chat(base, key["key"], max_tokens=6, temperature=0, seed=2)
        after = _committed(base, key["id"])
    assert [r.status_code for r in fresh] == [200, 200] and spent == 2 * SERVED_COST
    assert hit.status_code == 200 and hit.headers["x-cache"] == "hit"
    assert miss.status_code == 429 and miss.json()["error"]["code"] == "insufficient_quota"
    assert after == spent


def test_with_redis_a_budgeted_request_makes_at_most_one_call_before_its_answer(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    yaml = f"""
models:
  - name: m
    deployments:
      - {{provider: openai, api_base: '{upstream.url("ok")}', price: {{input_per_1m: 1.0, output_per_1m: 2.0}}}}
access:
  keys_refresh_s: 0.2
  redis_prefix: "tw-test-{secrets.token_hex(4)}:"
"""
    client = redis.Redis.from_url(REDIS)

    def calls_for_five(key: str, wait_s: float) -> int:
        assert chat(base, key, max_tokens=6).status_code == 200  # scripts loaded, key cached
        time.sleep(TTL_S + 0.3)  # the warm-up's settle is sent after its answer, its share goes back
        client.config_resetstat()
        for _ in range(5):
            assert chat(base, key, max_tokens=6).status_code == 200
        time.sleep(wait_s)  # the last settle leaves a loop turn after the last answer
        return _scripts_run(client)

    with gateway(yaml, tmp_path, redis_url=REDIS) as (base, _):
        # Near a limit (rpm 20 is less than a share's FRACTION of requests): one script per request on
        # its way in (limits and budget together), one settle after it.
        assert calls_for_five(create_key(base, rpm=20, budget="1/day")["key"], 0.3) == 10
        # Far from it: the first call takes a share that the next four spend; it goes back after TTL_S.
        assert calls_for_five(create_key(base, budget="1000/day")["key"], TTL_S + 0.3) == 2
    client.close()


def _scripts_run(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))
