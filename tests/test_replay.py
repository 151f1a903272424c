"""Record and replay over real sockets: a recorded request fetched back with its routing story (a
fallback made to happen), a stream assembled, redaction, the row cap and retention, on SQLite and
on Postgres; and ``tokenway replay`` in a subprocess against a running gateway."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.fakes import FakeUpstream
from tests.prompt_support import STORES, admin, client, rows, served

HELLO = "Hello from the fake upstream."


def _recording(upstream: FakeUpstream, record: str, scenario: str = "ok") -> str:
    """Model m answers from ``scenario`` and falls back to ``other`` (always fine, ten times the price);
    ``record`` is the ``record:`` section."""
    section = "".join(f"  {line}\n" for line in record.strip().splitlines())
    return f"""
models:
  - name: m
    fallbacks: [other]
    deployments:
      - provider: openai
        api_base: {upstream.url(scenario)}
        price: {{input_per_1m: 1.0, output_per_1m: 2.0}}
  - name: other
    deployments:
      - provider: openai
        api_base: {upstream.url("ok")}
        price: {{input_per_1m: 10.0, output_per_1m: 20.0}}
access:
  keys_refresh_s: 0.2
  redis_prefix: "tw-test-{secrets.token_hex(4)}:"
record:
{section}"""


def _fetch(base: str, request_id: str) -> dict[str, Any]:
    found = admin("GET", base, f"/admin/requests/{request_id}")
    assert found.status_code == 200, found.text
    return dict(found.json())


@pytest.mark.parametrize("store", STORES)
def test_recorded_request_tells_its_routing_story(upstream: FakeUpstream, tmp_path: Path, store: str) -> None:
    yaml = _recording(upstream, "models: [m]", scenario="status500")
    with served(yaml, tmp_path, store) as base:
        raw = client(base).chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "mail me at ada@example.com"}])
        assert raw.parse().choices[0].message.content == HELLO
        record = _fetch(base, raw.headers["x-request-id"])

    routing = record["routing"]
    assert routing["attempts"][0]["model"] == "m" and routing["attempts"][0]["outcome"] == "failed"
    assert routing["attempts"][0]["status"] == 502
    assert routing["attempts"][-1] == {**routing["attempts"][-1], "model": "other", "outcome": "answered"}
    assert routing["fallbacks"] == ["other"]
    assert routing["answered_by"] == {"model": "other", "deployment": "other#0"}
    # the default retry.attempts (3) on m's one deployment, then the fallback
    assert [a["model"] for a in routing["attempts"]] == ["m", "m", "m", "other"] and routing["retries"] == 2
    assert routing["cache"] == {"status": "bypass", "match": None} and routing["guards"] == []
    assert record["request"]["messages"] == [{"role": "user", "content": "mail me at [email]"}]  # the log's rules
    assert record["response"]["status"] == 200
    assert record["response"]["body"]["choices"][0]["message"]["content"] == HELLO
    assert record["usage"]["prompt_tokens"] > 0
    assert record["cost_usd"] == pytest.approx(
        (record["usage"]["prompt_tokens"] * 10 + record["usage"]["completion_tokens"] * 20) / 1e6)
    timings = record["timings"]
    assert timings["latency_ms"] >= timings["upstream_ms"] > 0


def test_stream_assembled_and_only_chosen_requests_kept(upstream: FakeUpstream, tmp_path: Path) -> None:
    yaml = _recording(upstream, "models: [m]").replace("    fallbacks: [other]\n", "    guards: [masked]\n")
    yaml += "guards:\n  profiles:\n    masked:\n      input: [{check: pii, action: mask}]\n"
    with served(yaml, tmp_path, "sqlite") as base:
        stream = client(base).chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi, call +1 415 555 0100"}], stream=True,
            stream_options={"include_usage": True})
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream.parse() if chunk.choices)
        assert text == HELLO
        record = _fetch(base, stream.headers["x-request-id"])
        assert record["stream"] is True
        assert record["response"]["body"]["choices"][0]["message"]["content"] == HELLO  # assembled from chunks
        assert record["usage"]["completion_tokens"] == 6
        assert record["routing"]["guards"] == ["pii/input/mask"]  # the guard's verdict is part of the story
        assert record["request"]["messages"][0]["content"] == "hi, call [phone]"

        other = client(base).chat.completions.with_raw_response.create(
            model="other", messages=[{"role": "user", "content": "hi"}])
        missing = admin("GET", base, f"/admin/requests/{other.headers['x-request-id']}")
        assert missing.status_code == 404 and "record.models" in missing.json()["error"]["message"]
        assert httpx.get(f"{base}/admin/requests/x").status_code == 401  # the master key is required


@pytest.mark.parametrize("store", STORES)
def test_row_cap_and_retention(upstream: FakeUpstream, tmp_path: Path, store: str) -> None:
    yaml = _recording(upstream, "models: ['*']\nmax_records: 3\nretention_s: 3\nflush_s: 0.1")
    where: list[str] = []
    with served(yaml, tmp_path, store, where) as base:
        ids = []
        for _ in range(5):
            raw = client(base).chat.completions.with_raw_response.create(
                model="m", messages=[{"role": "user", "content": "hi"}])
            ids.append(raw.headers["x-request-id"])
            time.sleep(0.15)  # each in its own batch: the cap holds across writes
        kept = [admin("GET", base, f"/admin/requests/{i}").status_code for i in ids]
        assert kept == [404, 404, 200, 200, 200]
        time.sleep(3.1)
        assert admin("GET", base, f"/admin/requests/{ids[-1]}").status_code == 404  # past the retention
        client(base).chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        time.sleep(0.3)  # the next write deletes what is past the retention
        assert rows(where[0], "tokenway_recorded_requests") == 1


def test_recorded_per_key_and_sampled(upstream: FakeUpstream, tmp_path: Path) -> None:
    """A key opted in is recorded on any model; sample 0 records nothing, but a replay is still kept."""
    env = {**os.environ, "TOKENWAY_DATA_DIR": str(tmp_path)}
    env.pop("TOKENWAY_DATABASE_URL", None)
    made = subprocess.run([sys.executable, "-m", "tokenway", "keys", "create", "--name", "traced"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    key = orjson.loads(made.stdout[:made.stdout.rindex("}") + 1])

    def recorded(base: str, api_key: str, model: str, request_id: str | None = None) -> int:
        raw = client(base, api_key).chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-request-id": request_id} if request_id else None)
        return admin("GET", base, f"/admin/requests/{raw.headers['x-request-id']}").status_code

    with served(_recording(upstream, f"keys: [{key['id']}]"), tmp_path, "sqlite") as base:
        assert recorded(base, key["key"], "other") == 200  # the key is opted in: its requests, whatever model
        assert recorded(base, "sk-master-test", "other") == 404  # the same model without that key: not chosen
    with served(_recording(upstream, "models: [m]\nsample: 0"), tmp_path, "sqlite") as base:
        assert recorded(base, "sk-master-test", "m") == 404  # m is opted in, but sampled at 0
        assert recorded(base, "sk-master-test", "m", "replay_abc") == 200  # what `tokenway replay` sends
        assert recorded(base, key["key"], "m", "replay_def") == 404  # only the master key may force one


@pytest.mark.parametrize("store", STORES)
def test_replay_round_trip(upstream: FakeUpstream, tmp_path: Path, store: str) -> None:
    with served(_recording(upstream, "models: [m]"), tmp_path, store) as base:
        raw = client(base).chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == HELLO
        request_id = raw.headers["x-request-id"]
        env = {**os.environ, "PYTHONPATH": os.getcwd(), "TOKENWAY_BASE_URL": base,
               "TOKENWAY_MASTER_KEY": "sk-master-test"}

        def replay(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "tokenway", "replay", *args], env=env,
                                  capture_output=True, text=True, timeout=60)

        table = replay(request_id, "--model", "other")
        assert table.returncode == 0, table.stderr
        lines = {line.split("  ")[0]: line for line in table.stdout.splitlines()}
        assert "m#0" in lines["deployment"] and "other#0" in lines["deployment"]
        assert lines["output"].count(HELLO) == 2
        assert lines["completion tokens"].split()[-2:] == ["6", "6"]
        costs = lines["cost usd"].split()[-2:]
        assert float(costs[1]) == pytest.approx(10 * float(costs[0]))  # other's price is ten times m's

        both = orjson.loads(replay(request_id, "--json").stdout)
        assert both["original"]["request_id"] == request_id
        assert both["replay"]["request_id"].startswith("replay_") and both["replay"]["model"] == "m"
        assert both["replay"]["stream"] is False  # sent again whole, so its usage and text come in one body

        unknown = replay("req_nope")
        assert unknown.returncode == 1 and "No recorded request" in unknown.stderr
