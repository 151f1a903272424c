"""Prompt versions over real sockets: made, activated and rolled back through the admin API and the
CLI, applied to chat requests sent with the ``openai`` SDK (what the fake upstream received), on
SQLite and on Postgres; and the 400s that name the field."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from tests.access_support import config, create_key, drop_schema, gateway, pg_schema, pg_url
from tests.fakes import FakeUpstream
from tests.prompt_support import STORES, admin, client, served
from tokenway.config import ConfigError, parse_config

SUPPORT = "You support {{product}}. Answer in {{tone}} words."


def _sent(upstream: FakeUpstream) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = upstream.seen[-1].body["messages"]
    assert "prompt" not in upstream.seen[-1].body  # the gateway's field never reaches the backend
    return messages


def _ask(base: str, prompt: dict[str, object], messages: list[dict[str, str]] | None = None) -> str:
    reply = client(base).chat.completions.create(model="m", messages=messages or [], extra_body={"prompt": prompt})
    return reply.choices[0].message.content or ""


@pytest.mark.parametrize("store", STORES)
def test_create_activate_roll_back_and_apply(upstream: FakeUpstream, tmp_path: Path, store: str) -> None:
    with served(config(upstream), tmp_path, store) as base:
        v1 = admin("POST", base, "/admin/prompts", json={"id": "support", "system": SUPPORT, "activate": True})
        assert v1.status_code == 200, v1.text
        assert v1.json()["version"] == 1 and v1.json()["variables"] == ["product", "tone"]
        v2 = admin("POST", base, "/admin/prompts", json={
            "id": "support", "system": "v2 for {{product}}, {{tone}}.", "user": "Question: {{q}}", "note": "terse"})
        assert v2.json()["version"] == 2 and v2.json()["active"] is False

        variables = {"product": "tokenway", "tone": "few"}
        assert _ask(base, {"id": "support", "variables": variables},
                    [{"role": "user", "content": "hi"}]) == "Hello from the fake upstream."
        assert _sent(upstream) == [{"role": "system", "content": "You support tokenway. Answer in few words."},
                                   {"role": "user", "content": "hi"}]

        assert admin("POST", base, "/admin/prompts/support/activate", json={"version": 2}).json()["version"] == 2
        _ask(base, {"id": "support", "variables": {**variables, "q": "why?"}})
        assert _sent(upstream) == [{"role": "system", "content": "v2 for tokenway, few."},
                                   {"role": "user", "content": "Question: why?"}]

        _ask(base, {"id": "support", "version": 1, "variables": variables})  # a version named: not the active one
        assert _sent(upstream)[0]["content"].startswith("You support")

        rolled = admin("POST", base, "/admin/prompts/support/rollback")
        assert rolled.status_code == 200 and rolled.json()["version"] == 1
        _ask(base, {"id": "support", "variables": variables})
        assert _sent(upstream)[0]["content"] == "You support tokenway. Answer in few words."

        listing = admin("GET", base, "/admin/prompts").json()["data"]
        assert {"id": "support", "active_version": 1, "versions": 2, "latest_version": 2} in listing
        versions = admin("GET", base, "/admin/prompts/support").json()["data"]
        assert [(v["version"], v["active"], v["note"]) for v in versions] == [(1, True, None), (2, False, "terse")]

        metrics = httpx.get(base + "/metrics", headers={"Authorization": "Bearer sk-master-test"}).text
        assert 'tokenway_prompt_requests_total{model="m",prompt="support",status_code="200",version="1"} 3.0' \
            in metrics


@pytest.mark.parametrize("store", STORES)
def test_errors_name_the_field(upstream: FakeUpstream, tmp_path: Path, store: str) -> None:
    with served(config(upstream), tmp_path, store) as base:
        admin("POST", base, "/admin/prompts", json={"id": "p", "system": "Hi {{name}}", "activate": True})
        sent_before = len(upstream.seen)

        def refused(prompt: object, messages: list[dict[str, str]] | None = None) -> dict[str, object]:
            with pytest.raises(openai.BadRequestError) as caught:
                client(base).chat.completions.create(model="m", messages=messages or [],
                                                     extra_body={} if prompt is None else {"prompt": prompt})
            body = caught.value.body
            assert isinstance(body, dict)
            return body

        assert refused({"id": "nope"})["param"] == "prompt.id"
        assert refused({"id": "p", "version": 9})["param"] == "prompt.version"
        missing = refused({"id": "p"})
        assert missing["param"] == "prompt.variables.name" and missing["code"] == "missing_required_parameter"
        assert refused({"id": "p", "variables": {"name": "a", "typo": "b"}})["param"] == "prompt.variables.typo"
        assert refused({"id": "p", "version": "1"})["param"] == "prompt.version"  # strict: a string is no number
        assert refused({"id": "p", "variables": {"name": 3}})["param"] == "prompt.variables.name"
        assert refused({"variables": {}})["param"] == "prompt.id"
        assert refused(None)["param"] == "messages"  # no prompt: messages may not be empty
        simple = httpx.post(base + "/chat", headers={"Authorization": "Bearer sk-master-test"},
                            json={"messages": [{"role": "user", "content": "x"}], "prompt": "p"})
        assert simple.status_code == 400 and simple.json()["error"]["param"] == "prompt"  # /chat checks it too
        assert len(upstream.seen) == sent_before  # none of them reached the backend
        simple = httpx.post(base + "/chat", headers={"Authorization": "Bearer sk-master-test"},
                            json={"messages": [{"role": "user", "content": "x"}],
                                  "prompt": {"id": "p", "variables": {"name": "Ada"}}})
        assert simple.status_code == 200 and _sent(upstream)[0] == {"role": "system", "content": "Hi Ada"}

        only_one = admin("POST", base, "/admin/prompts/p/rollback")
        assert only_one.status_code == 400 and "nothing to roll back" in only_one.json()["error"]["message"]
        assert admin("POST", base, "/admin/prompts/p/activate", json={"version": 5}).status_code == 404
        assert admin("POST", base, "/admin/prompts/zzz/rollback").status_code == 404
        assert admin("GET", base, "/admin/prompts/zzz").status_code == 404
        empty = admin("POST", base, "/admin/prompts", json={"id": "q"})
        assert empty.status_code == 400 and "system" in empty.json()["error"]["message"]
        assert admin("POST", base, "/admin/prompts", json={"id": "bad id!", "system": "x"}).status_code == 400
        assert httpx.get(base + "/admin/prompts").status_code == 401  # the master key is required


def test_key_and_model_pins(upstream: FakeUpstream, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    yaml = config(upstream).replace("  - name: other\n", "  - name: other\n    prompt: house@1\n")
    with served(yaml, tmp_path, "sqlite") as base:
        admin("POST", base, "/admin/prompts", json={"id": "house", "system": "House style v1.", "activate": True})
        admin("POST", base, "/admin/prompts", json={"id": "house", "system": "House style v2.", "activate": True})
        admin("POST", base, "/admin/prompts", json={"id": "legal", "system": "Be careful.", "activate": True})
        key = create_key(base, name="pinned", prompt="legal")
        hi = [{"role": "user", "content": "hi"}]

        client(base, key["key"]).chat.completions.create(model="m", messages=hi)  # type: ignore[arg-type]
        assert _sent(upstream) == [{"role": "system", "content": "Be careful."}, *hi]
        client(base).chat.completions.create(model="other", messages=hi)  # type: ignore[arg-type]
        assert _sent(upstream)[0]["content"] == "House style v1."  # the model's pin names version 1
        client(base).chat.completions.create(model="m", messages=hi)  # type: ignore[arg-type]
        assert _sent(upstream) == hi  # no pin, no prompt: as sent
        dangling = create_key(base, name="dangling", prompt="legal@9")
        with pytest.raises(openai.BadRequestError) as caught:
            client(base, dangling["key"]).chat.completions.create(model="m", messages=hi)  # type: ignore[arg-type]
        assert "no version 9" in caught.value.message and "pinned by your key" in caught.value.message
        bad = admin("POST", base, "/admin/keys", json={"prompt": "legal@zero"})
        assert bad.status_code == 400 and "name@3" in bad.json()["error"]["message"]
        time.sleep(0.3)  # the log's flusher writes a few times a second
    lines = [orjson.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["event"] == "request"]
    assert [(r["model"], r.get("prompt"), r.get("prompt_version")) for r in requests] == [
        ("m", "legal", 1), ("other", "house", 1), ("m", None, None), ("m", None, None)]  # the last: the 400


def test_a_bad_pin_in_the_config_names_its_line(upstream: FakeUpstream) -> None:
    yaml = config(upstream).replace("  - name: other\n", "  - name: other\n    prompt: house@latest\n")
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml, "tokenway.yaml")
    line = yaml.splitlines().index("    prompt: house@latest") + 1
    assert f"tokenway.yaml:{line}: models[1].prompt" in str(caught.value) and "name@3" in str(caught.value)


def test_cli_change_reaches_a_running_gateway(upstream: FakeUpstream, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "TOKENWAY_DATA_DIR": str(tmp_path)}

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "tokenway", "prompts", *args], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    cli("create", "greet", "--system", "Greet {{who}}.", "--activate")
    with served(config(upstream), tmp_path, "sqlite") as base:
        _ask(base, {"id": "greet", "variables": {"who": "Ada"}})
        assert _sent(upstream)[0]["content"] == "Greet Ada."
        cli("create", "greet", "--system", "Welcome {{who}}!")
        cli("activate", "greet", "2")
        assert "greet" in cli("list")
        started = time.monotonic()
        while True:  # the gateway polls the store: a change made elsewhere arrives within prompts.refresh_s
            _ask(base, {"id": "greet", "variables": {"who": "Ada"}})
            if _sent(upstream)[0]["content"] == "Welcome Ada!":
                break
            assert time.monotonic() - started < 3, "the CLI's activation never reached the gateway"
            time.sleep(0.1)
        assert '"version": 1' in cli("rollback", "greet")
        failed = subprocess.run([sys.executable, "-m", "tokenway", "prompts", "activate", "greet", "7"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert failed.returncode == 1 and "no version 7" in failed.stderr
        empty = subprocess.run([sys.executable, "-m", "tokenway", "prompts", "create", "greet"], env=env,
                               capture_output=True, text=True, timeout=60)
        assert empty.returncode == 2 and "needs a 'system' part" in empty.stderr and "--system" in empty.stderr


def test_a_change_reaches_another_replica_through_postgres(upstream: FakeUpstream, tmp_path: Path) -> None:
    schema = pg_schema()
    yaml = config(upstream)
    try:
        with gateway(yaml, tmp_path / "a", database_url=pg_url(schema)) as (a, _), \
                gateway(yaml, tmp_path / "b", database_url=pg_url(schema)) as (b, _):

            def b_says(text: str) -> float:
                """Seconds until replica b sends ``text`` as the system message."""
                started = time.monotonic()
                while True:
                    try:
                        _ask(b, {"id": "fleet"})
                        if _sent(upstream)[0]["content"] == text:
                            return time.monotonic() - started
                    except openai.BadRequestError:  # not there yet: an unknown prompt
                        pass
                    assert time.monotonic() - started < 3, f"replica b never used {text!r}"
                    time.sleep(0.05)

            admin("POST", a, "/admin/prompts", json={"id": "fleet", "system": "one", "activate": True})
            assert b_says("one") < 1.5  # prompts.refresh_s is 0.5
            admin("POST", a, "/admin/prompts", json={"id": "fleet", "system": "two", "activate": True})
            assert b_says("two") < 1.5
            assert admin("POST", b, "/admin/prompts/fleet/rollback").json()["version"] == 1  # b rolls back ...
            _ask(b, {"id": "fleet"})
            assert _sent(upstream)[0]["content"] == "one"  # ... uses it at once ...
            started = time.monotonic()
            while True:  # ... and a follows by polling (its GET /admin/prompts would refresh at once: not used)
                _ask(a, {"id": "fleet"})
                if _sent(upstream)[0]["content"] == "one":
                    break
                assert time.monotonic() - started < 1.5
                time.sleep(0.05)
    finally:
        drop_schema(schema)


def test_a_responses_request_names_a_prompt_version(upstream: FakeUpstream, tmp_path: Path) -> None:
    """Responses' own ``prompt`` field names the gateway's prompt versions (its version a string, a variable
    a string or an input_text part); ``input`` may then be left out."""
    with served(config(upstream), tmp_path, "sqlite") as base:
        admin("POST", base, "/admin/prompts", json={"id": "support", "system": SUPPORT, "user": "Q: {{q}}",
                                                    "activate": True})
        variables = {"product": "tokenway", "tone": "few", "q": {"type": "input_text", "text": "why?"}}
        response = client(base).responses.create(model="m", prompt={"id": "support", "version": "1",
                                                                    "variables": variables})
        sent = _sent(upstream)
        with_input = client(base).responses.create(model="m", input="and then?", prompt={
            "id": "support", "variables": {**variables, "q": "how?"}})
        sent_with_input = _sent(upstream)
        with pytest.raises(openai.BadRequestError) as unknown:
            client(base).responses.create(model="m", prompt={"id": "nope"})
        with pytest.raises(openai.BadRequestError) as neither:
            client(base).responses.create(model="m")  # type: ignore[call-overload]
    assert response.output_text == "Hello from the fake upstream." and with_input.output_text
    assert sent == [{"role": "system", "content": "You support tokenway. Answer in few words."},
                    {"role": "user", "content": "Q: why?"}]
    assert sent_with_input[1:] == [{"role": "user", "content": "Q: how?"}, {"role": "user", "content": "and then?"}]
    assert unknown.value.body["param"].startswith("prompt")  # type: ignore[index]
    assert neither.value.body["param"] == "input"  # type: ignore[index]
