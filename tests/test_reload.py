"""Live reload of the config file in a real ``tokenway serve`` process, under load.

SIGHUP and ``POST /admin/config/reload`` swap in a new config while many JSON and streaming calls
run through the ``openai`` SDK: none fails and no stream is cut. A bad config is refused with its
line (400 from the admin API, a log line for SIGHUP) and the old one keeps serving; rollback goes
back one; a deployment whose config did not change keeps its breaker (open stays open).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fakes import FakeUpstream
from tests.servers import free_port, serving_workers, wait_until_ready

MASTER = "sk-reload-master"
ADMIN = {"Authorization": f"Bearer {MASTER}"}
WHOLE = "Hello from the fake upstream."


def config(upstream: FakeUpstream, *, weight: float = 1.0, extra_model: bool = False) -> str:
    """``chat`` (two deployments, the second's weight varies), ``flaky`` (always 500s, a breaker that opens
    after two failures and stays open), and optionally a third model that reloads add and remove."""
    text = f"""\
models:
  - name: chat
    deployments:
      - {{name: chat-a, api_base: "{upstream.url('sse')}"}}
      - {{name: chat-b, api_base: "{upstream.url('sse')}", weight: {weight}}}
  - name: flaky
    retry: {{attempts: 1}}
    breaker: {{consecutive_failures: 2, cooldown: 600}}
    deployments:
      - {{name: flaky-a, api_base: "{upstream.url('status500')}"}}
"""
    if extra_model:
        text += f"""\
  - name: extra
    deployments:
      - {{name: extra-a, api_base: "{upstream.url('sse')}"}}
"""
    return text


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(first_delay=0.0, chunk_delay=0.02).start()
    yield fake
    fake.stop()


class Server:
    def __init__(self, path: Path, log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "TOKENWAY_PORT": str(self.port), "TOKENWAY_CONFIG": str(path),
               "TOKENWAY_MASTER_KEY": MASTER, "TOKENWAY_DATA_DIR": str(path.parent / "data")}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self._log = log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "tokenway", "serve"], env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.log_path = log

    def status(self) -> dict[str, Any]:
        answer = httpx.get(self.base + "/admin/status", headers=ADMIN, timeout=5)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def reload(self) -> httpx.Response:
        return httpx.post(self.base + "/admin/config/reload", headers=ADMIN, timeout=30)

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == name:
                    out.append(record)
        return out

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self._log.close()


@pytest.fixture
def served(tmp_path: Path, upstream: FakeUpstream) -> Iterator[tuple[Server, Path]]:
    path = tmp_path / "tokenway.yaml"
    path.write_text(config(upstream))
    server = Server(path, tmp_path / "server.log")
    try:
        wait_until_ready(server.base, alive=lambda: server.proc.poll() is None)
        yield server, path
    finally:
        server.stop()


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "condition not met in time"
        time.sleep(0.05)


class Load:
    """Threads that call the gateway without pause, half streaming, until stopped; every outcome kept."""

    def __init__(self, base: str, threads: int = 12) -> None:
        self._client = openai.OpenAI(base_url=base + "/v1", api_key=MASTER, max_retries=0, timeout=30)
        self._stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, index: int) -> None:
        messages = [{"role": "user", "content": f"hello {index}"}]
        while not self._stop.is_set():
            try:
                if index % 2:
                    stream = self._client.chat.completions.create(model="chat", messages=messages,  # type: ignore[arg-type]
                                                                  stream=True)
                    chunks = list(stream)
                    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
                    if text != WHOLE or finished != ["stop"]:
                        self.failures.append(f"stream cut: {text!r} {finished}")
                        continue
                else:
                    answer = self._client.chat.completions.create(model="chat", messages=messages)  # type: ignore[arg-type]
                    if answer.choices[0].message.content != WHOLE:
                        self.failures.append(f"wrong answer: {answer.choices[0].message.content!r}")
                        continue
                self.ok += 1
            except Exception as exc:  # every failure is the finding
                self.failures.append(repr(exc))


def test_reloads_under_load_drop_nothing(served: tuple[Server, Path], upstream: FakeUpstream) -> None:
    server, path = served
    first = server.status()["config_hash"]
    hashes = {first}
    with Load(server.base) as load:
        wait_for(lambda: load.ok >= 20)
        for round_ in range(6):
            path.write_text(config(upstream, weight=2.0 + round_, extra_model=round_ % 2 == 0))
            before = load.ok
            if round_ % 2:
                server.proc.send_signal(signal.SIGHUP)
                wait_for(lambda: server.status()["config_hash"] not in hashes)
            else:
                answer = server.reload()
                assert answer.status_code == 200, answer.text
                assert answer.json()["previous_hash"] in hashes
            hashes.add(server.status()["config_hash"])
            wait_for(lambda before=before: load.ok >= before + 20)  # calls kept flowing on the new config
    assert load.failures == [] and load.ok > 150, (load.failures[:5], load.ok)
    assert len(hashes) == 7
    applied = server.events("config_applied")
    assert len(applied) == 6 and {e["trigger"] for e in applied} == {"admin", "SIGHUP"}
    # chat-b changed every time and the extra model came and went: each replaced deployment's provider
    # was closed once its calls were done
    wait_for(lambda: len(server.events("deployments_retired")) == 6)
    retired = [sorted(e["deployments"]) for e in server.events("deployments_retired")]
    assert retired == [["chat-b"], ["chat-b", "extra-a"]] * 3


def test_a_bad_config_is_refused_with_its_line_and_the_old_one_serves(served: tuple[Server, Path]) -> None:
    server, path = served
    good = path.read_text()
    serving = server.status()["config_hash"]
    path.write_text(good.replace("consecutive_failures: 2", "consecutive_failures: -2"))
    answer = server.reload()
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "invalid_config" and error["type"] == "invalid_request_error"
    assert "tokenway.yaml:8: models[1].breaker.consecutive_failures" in error["message"], error["message"]
    path.write_text(good + "  - {name: broken\n")  # not YAML at all, by SIGHUP this time
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(server.events("config_refused")) == 2)
    assert "tokenway.yaml:" in server.events("config_refused")[1]["error"]
    assert server.status()["config_hash"] == serving
    client = openai.OpenAI(base_url=server.base + "/v1", api_key=MASTER, max_retries=0)
    answer_ = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "still?"}])
    assert answer_.choices[0].message.content == WHOLE


def test_rollback_goes_back_one(served: tuple[Server, Path], upstream: FakeUpstream) -> None:
    server, path = served
    first = server.status()["config_hash"]
    path.write_text(config(upstream, extra_model=True) + "limits: {max_messages: 100}\n")
    applied = server.reload()
    assert applied.status_code == 200
    assert applied.json()["restart_required"] == ["limits"]  # the rest applied; limits wait for a restart
    second = server.status()["config_hash"]
    assert "extra" in server.status()["models"]
    answer = httpx.post(server.base + "/admin/config/rollback", headers=ADMIN, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["config_hash"] == first and answer.json()["previous_hash"] == second
    assert server.status()["config_hash"] == first and "extra" not in server.status()["models"]
    history = httpx.get(server.base + "/admin/config", headers=ADMIN).json()["history"]
    assert [h["config_hash"] for h in history] == [first]
    again = httpx.post(server.base + "/admin/config/rollback", headers=ADMIN, timeout=30)
    assert again.status_code == 409 and again.json()["error"]["code"] == "config_conflict"
    anonymous = httpx.post(server.base + "/admin/config/reload", timeout=30)
    assert anonymous.status_code == 401


def test_an_unchanged_deployment_keeps_its_open_breaker(served: tuple[Server, Path], upstream: FakeUpstream) -> None:
    server, path = served
    client = openai.OpenAI(base_url=server.base + "/v1", api_key=MASTER, max_retries=0)
    for _ in range(2):
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="flaky", messages=[{"role": "user", "content": "x"}])

    def breakers() -> dict[str, str]:
        models = server.status()["models"]
        return {d["name"]: d["breaker"]["state"] for group in models.values() for d in group}

    assert breakers()["flaky-a"] == "open"
    path.write_text(config(upstream, weight=3.0))  # chat-b changes; flaky-a does not
    assert server.reload().json()["deployments"] == {"kept": 2, "started": 1, "retiring": 1}
    assert breakers()["flaky-a"] == "open"
    with pytest.raises(openai.APIStatusError) as shed:
        client.chat.completions.create(model="flaky", messages=[{"role": "user", "content": "x"}])
    assert shed.value.status_code == 503  # shed by the breaker carried over, not sent upstream


def test_every_worker_reloads_when_the_file_changes(tmp_path: Path, upstream: FakeUpstream) -> None:
    """``serve --workers 2`` with TOKENWAY_CONFIG_WATCH_S: each worker sees the file change on its own."""
    with serving_workers(config(upstream), tmp_path, workers=2, TOKENWAY_CONFIG_WATCH_S="0.2") as base:
        (tmp_path / "tokenway.yaml").write_text(config(upstream, extra_model=True))

        def every_worker_has_it() -> bool:
            # a new connection per call: the workers share the listening socket, so calls spread over both
            return all("extra" in {m["id"] for m in httpx.get(base + "/v1/models").json()["data"]}
                       for _ in range(20))

        wait_for(every_worker_has_it, timeout=15)
        answer = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0).chat.completions.create(
            model="extra", messages=[{"role": "user", "content": "new model"}])
        assert answer.choices[0].message.content == WHOLE


def test_a_stream_outlives_the_deployment_a_reload_dropped(tmp_path: Path) -> None:
    """A stream that started before the reload ends whole on the old deployment; its provider closes after."""
    slow = FakeUpstream(first_delay=0.0, chunk_delay=0.3).start()  # six chunks: about 1.8 s
    try:
        path = tmp_path / "tokenway.yaml"
        path.write_text(config(slow))
        server = Server(path, tmp_path / "server.log")
        try:
            wait_until_ready(server.base, alive=lambda: server.proc.poll() is None)
            client = openai.OpenAI(base_url=server.base + "/v1", api_key=MASTER, max_retries=0)
            stream = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "long"}],
                                                    stream=True, user="u")
            first = next(iter(stream))  # under way on chat-a or chat-b
            path.write_text(config(slow, weight=7.0).replace("name: chat-a,", "name: chat-c,"))
            assert server.reload().json()["deployments"] == {"kept": 1, "started": 2, "retiring": 2}
            rest = list(stream)
            ended = time.time()
            text = "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)
            assert text == WHOLE and rest[-1].choices[0].finish_reason == "stop"
            wait_for(lambda: server.events("deployments_retired") != [])
            retired = server.events("deployments_retired")[0]
            assert sorted(retired["deployments"]) == ["chat-a", "chat-b"]
            assert retired_at(retired) >= ended - 0.05  # closed only once the stream was done
            assert slow.hangups == []
        finally:
            server.stop()
    finally:
        slow.stop()


def retired_at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def test_a_model_a_reload_adds_is_held_at_its_own_price(tmp_path: Path, upstream: FakeUpstream) -> None:
    """Budgets are held at the prices of the models the current config serves: a model added by a reload
    is not held at nothing (which would let concurrent calls overspend a budget)."""
    from tests.access_support import MASTER as ACCESS_MASTER
    from tests.access_support import create_key, gateway

    def priced(*models: tuple[str, float]) -> str:
        listed = "".join(f"""
  - name: {name}
    deployments: [{{provider: openai, api_base: "{upstream.url(name)}", price: {{input_per_1m: {price},
                    output_per_1m: {price}}}}}]""" for name, price in models)
        return f"models:{listed}\naccess: {{keys_refresh_s: 0.2, redis_prefix: 'tw-test-reload-price:'}}\n"

    path = tmp_path / "tokenway.yaml"
    path.write_text(priced(("cheap", 1.0)))
    with gateway(path.read_text(), tmp_path, config=path) as (base, _):
        key = create_key(base, name="budgeted", budget={"amount": 0.001, "period": "total"})["key"]
        path.write_text(priced(("cheap", 1.0), ("dear", 1000.0)))
        reloaded = httpx.post(base + "/admin/config/reload", headers={"Authorization": f"Bearer {ACCESS_MASTER}"})
        client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.RateLimitError):  # 1,000 tokens at $1,000 per 1M: $1 held, $0.001 left
            client.chat.completions.create(model="dear", messages=[{"role": "user", "content": "hi"}], max_tokens=1000)
        cheap = client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=10)
    assert reloaded.status_code == 200, reloaded.text
    assert cheap.choices[0].message.content
    assert not any(seen.path.startswith("/dear/") for seen in upstream.seen)


def test_a_reload_changes_a_models_guards_and_cache_rules(tmp_path: Path, upstream: FakeUpstream) -> None:
    """A model's guard profiles and cache rules are part of ``models``, which a reload applies: a profile a
    reload adds to a model guards its next call, and caching a reload turns on answers the call after."""
    from tests.access_support import MASTER as ACCESS_MASTER
    from tests.access_support import gateway

    def guarded(on: bool) -> str:
        return f"""
models:
  - name: m
    guards: {"[scrub]" if on else "[]"}
    cache: {{enabled: {str(on).lower()}}}
    deployments: [{{provider: openai, api_base: "{upstream.url("guarded")}"}}]
  - name: other
    cache: {{enabled: true}}
    deployments: [{{provider: openai, api_base: "{upstream.url("other")}"}}]
guards:
  profiles:
    scrub: {{input: [{{check: pii, action: mask}}]}}
cache: {{enabled: false}}
"""

    path = tmp_path / "tokenway.yaml"
    path.write_text(guarded(False))
    ask = {"model": "m", "messages": [{"role": "user", "content": "I am ann@example.com"}], "temperature": 0}
    auth = {"Authorization": f"Bearer {ACCESS_MASTER}"}
    with gateway(path.read_text(), tmp_path, config=path) as (base, _):
        before = httpx.post(base + "/v1/chat/completions", json=ask, headers=auth)
        sent_before = upstream.seen[-1].body["messages"][0]["content"]
        path.write_text(guarded(True))
        assert httpx.post(base + "/admin/config/reload", headers=auth).status_code == 200
        calls = len(upstream.seen)
        after = [httpx.post(base + "/v1/chat/completions", json=ask, headers=auth) for _ in range(2)]
    assert before.status_code == 200 and sent_before == "I am ann@example.com"
    assert upstream.seen[calls].body["messages"][0]["content"] == "I am [EMAIL]"
    assert len(upstream.seen) == calls + 1  # the second call was answered from the cache
    assert [r.headers.get("x-cache") for r in after] == ["miss", "hit"]
