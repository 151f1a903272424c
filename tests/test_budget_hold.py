"""The budget hold: taken at admission with the rate limits, in one store call, and settled once.

Admission holds the worst case (prompt estimate + max_tokens) at the dearest rates of every
deployment that may serve the request, the model's fallbacks included but only those the key may
use; the request is settled to its real cost when it ends (a cache hit gives it all back).
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import httpx
import redis

from tests.access_support import MASTER, REDIS, RESERVED_COST, SERVED_COST, chat, create_key, gateway
from tests.fakes import FakeUpstream

DEAR = 10  # the dear model's price is ten times the cheap one's


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


def test_the_hold_covers_a_fallback_to_a_dearer_model(upstream: FakeUpstream, tmp_path: Path) -> None:
    # The budget holds exactly one worst case at the dear price: the cheap model fails, the dear
    # fallback answers within the hold, and the next request no longer fits.
    with gateway(_priced_models(upstream, DEAR * RESERVED_COST), tmp_path) as (base, _):
        key = create_key(base, team="t")
        first = chat(base, key["key"], model="cheap", max_tokens=6)
        after_first = _committed(base, key["id"])
        second = chat(base, key["key"], model="cheap", max_tokens=6)
        after_second = _committed(base, key["id"])
    assert first.status_code == 200
    assert after_first == DEAR * SERVED_COST  # settled to what the dear model's answer cost
    assert second.status_code == 429 and second.json()["error"]["code"] == "insufficient_quota"
    assert after_second == DEAR * SERVED_COST  # the refused request took nothing


def test_a_hold_that_does_not_fit_is_refused_before_any_backend_is_called(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    with gateway(_priced_models(upstream, 5 * RESERVED_COST), tmp_path) as (base, _):
        key = create_key(base, team="t")
        answer = chat(base, key["key"], model="cheap", max_tokens=6)
        committed = _committed(base, key["id"])
    assert answer.status_code == 429 and answer.json()["error"]["code"] == "insufficient_quota"
    assert committed == 0 and upstream.seen == []


def test_a_fallback_outside_the_keys_allow_list_is_skipped_and_not_held_for(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    # Only the cheap model is allowed: the hold is at the cheap price, and when the cheap model
    # fails the dear fallback is never called.
    with gateway(_priced_models(upstream, 2 * RESERVED_COST), tmp_path) as (base, _):
        key = create_key(base, team="t", models=["cheap"])
        answer = chat(base, key["key"], model="cheap", max_tokens=6)
        committed = _committed(base, key["id"])
    assert answer.status_code in (500, 502), answer.text
    assert committed == 0  # nothing was served: the hold was given back
    assert [seen.path.split("/")[1] for seen in upstream.seen] == ["status500"] * 2  # both attempts, no fallback


def test_a_cache_hit_is_served_on_a_spent_budget_and_returns_its_hold(upstream: FakeUpstream, tmp_path: Path) -> None:
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
        miss = chat(base, key["key"], max_tokens=6, temperature=0, seed=2)
        after = _committed(base, key["id"])
    assert [r.status_code for r in fresh] == [200, 200] and spent == 2 * SERVED_COST
    assert miss.status_code == 429 and miss.json()["error"]["code"] == "insufficient_quota"
    assert after == spent


def test_with_redis_a_budgeted_request_near_its_limit_makes_one_call_before_its_answer_and_fewer_far_from_it(
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

    def script_calls(key: str) -> int:
        client.config_resetstat()
        for _ in range(5):
            assert chat(base, key, max_tokens=6).status_code == 200
        time.sleep(0.3)  # the last settle is sent after its answer
        stats = client.info("commandstats")
        return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))

    with gateway(yaml, tmp_path, redis_url=REDIS) as (base, _):
        near = create_key(base, rpm=20, budget="1/day")["key"]
        far = create_key(base, rpm=100_000, budget="1000/day")["key"]
        for key in (near, far):  # scripts loaded, keys cached
            assert chat(base, key, max_tokens=6).status_code == 200
        time.sleep(1.2)  # the warm-up's settle is sent after its answer, and the far key's share goes back
        near_calls, far_calls = script_calls(near), script_calls(far)
    client.close()
    # Near a limit, one script per request on its way in (limits and budget together), one settle after it.
    assert near_calls == 10
    # Far from its limits, the first request's call also takes a share that the next four spend in
    # process: one call on the way in, one settle each (and the share's return, if it expired meanwhile).
    assert far_calls <= 7
