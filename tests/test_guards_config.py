"""Guard profiles in the config (errors at their YAML line), the policy's place in the list (absent
when no profile exists), and the policy in process on a scripted provider."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.inprocess import gateway, reply, sse_data, streamed_text
from tokenway.config import ConfigError, parse_config
from tokenway.guards.policy import Guards, open_guards
from tokenway.observability.logging import JsonLog
from tokenway.observability.metrics import Metrics
from tokenway.policies.cache import ResponseCache
from tokenway.prompts.policy import ApplyPrompt

MODELS = """
models:
  - name: m
    guards: [pii]
    deployments: [{provider: fake, name: a}]
"""
PROFILES = """
guards:
  profiles:
    pii:
      input: [{check: pii, action: mask}]
      output: [{check: pii, action: mask}]
"""


def problem(yaml: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml, "tokenway.yaml")
    return str(caught.value)


def test_a_model_naming_an_undefined_profile_fails_at_its_line() -> None:
    yaml = """models:
  - name: m
    deployments: [{provider: fake, name: a}]
    guards:
      - pii
      - nope
guards:
  profiles:
    pii: {input: [{check: pii}]}
"""
    message = problem(yaml)
    assert message.startswith("tokenway.yaml:6: models[0].guards[1]: ")
    assert "'nope' is not under guards.profiles (defined: pii)" in message


@pytest.mark.parametrize(("check", "said"), [
    ("input: [{check: injection, action: mask}]", "cannot be masked"),
    ("input: [{check: max_output_chars, limit: 5}]", "put it under 'output'"),
    ("output: [{check: injection}]", "put it under 'input'"),
    ("input: [{check: pii, kinds: [email, ssn]}]", "kinds"),
    ("input: [{check: blocked_terms, terms: []}]", "terms"),
    ("input: [{check: secrets}]", "check"),
])
def test_bad_checks_are_refused_with_their_line(check: str, said: str) -> None:
    message = problem(f"{MODELS}guards:\n  profiles:\n    pii:\n      {check}\n")
    assert message.startswith("tokenway.yaml:") and said in message, message
    assert int(message.split(":")[1]) >= 9  # the profile's line or below, not the top of the file


def test_no_profile_no_policy() -> None:
    yaml = "models: [{name: m, deployments: [{provider: fake, name: a}]}]"
    assert asyncio.run(open_guards(parse_config(yaml), Metrics(), JsonLog(io.BytesIO()))) is None


async def test_the_policy_sits_after_access_and_prompts_and_before_the_cache() -> None:
    async with gateway(MODELS + PROFILES + "cache: {enabled: true}\n") as gw:
        kinds = [type(policy) for policy in gw.app.policies(gw.app.models, gw.app.config)]
    # after the prompt's messages are in (the guards read what the backend will), right before the cache
    assert kinds.index(Guards) == kinds.index(ApplyPrompt) + 1 and kinds.index(ResponseCache) == kinds.index(Guards) + 1
    async with gateway("models: [{name: m, deployments: [{provider: fake, name: a}]}]") as gw:
        assert Guards not in [type(policy) for policy in gw.app.policies(gw.app.models, gw.app.config)]


async def test_masks_in_process_json_and_stream() -> None:
    async with gateway(MODELS + PROFILES) as gw:
        gw.fake("a").script(reply("Mail ", "ivan@exa", "mple.com", " now."), reply("Mail ", "ivan@exa", "mple.com"))
        answer = await gw.chat(messages=[{"role": "user", "content": "I am judy@example.com"}])
        streamed = await gw.chat(stream=True)
        calls = gw.fake("a").calls
    assert answer.json()["choices"][0]["message"]["content"] == "Mail [EMAIL] now."
    assert calls[0]["messages"][0]["content"] == "I am [EMAIL]"
    assert streamed_text(streamed) == "Mail [EMAIL]" and sse_data(streamed)[-1] == "[DONE]"


def test_keys_cli_sets_guard_profiles_checked_against_the_config(tmp_path: Path) -> None:
    path = tmp_path / "tokenway.yaml"
    path.write_text(MODELS.replace("{provider: fake, name: a}", "{provider: openai, api_base: 'http://127.0.0.1:9/v1'}")
                    + PROFILES)
    env = {**os.environ, "TOKENWAY_DATA_DIR": str(tmp_path), "TOKENWAY_CONFIG": str(path)}
    env.pop("TOKENWAY_DATABASE_URL", None)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tokenway", "keys", *args], env=env, capture_output=True,
                              text=True, check=False, timeout=60)

    refused = cli("create", "--name", "x", "--guards", "pii,nope")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "Unknown guard profile 'nope'" in refused.stdout and "defines pii" in refused.stdout
    created = cli("create", "--name", "x", "--guards", "pii")
    assert created.returncode == 0, created.stdout + created.stderr
    record = json.loads(created.stdout[: created.stdout.rindex("}") + 1])
    assert record["guards"] == ["pii"]
    cleared = cli("update", record["id"], "--guards", "")
    assert json.loads(cleared.stdout)["guards"] == []


async def test_completions_prompt_and_text_are_guarded_in_process() -> None:
    async with gateway(MODELS + PROFILES) as gw:
        gw.fake("a").script(reply("key AKIA", "IOSFODNN7EXAMPLE ok"), reply("call +44 20 ", "7946 0958"))
        answer = await gw.clock.run(gw.client.post("/v1/completions", json={
            "model": "m", "prompt": ["mail kim@example.com", "plain"]}))
        streamed = await gw.clock.run(gw.client.post("/v1/completions", json={
            "model": "m", "prompt": "hi", "stream": True}))
        sent = gw.fake("a").calls[0]["prompt"]
    assert answer.json()["choices"][0]["text"] == "key [SECRET] ok"
    assert sent == ["mail [EMAIL]", "plain"]
    text = "".join(c["choices"][0]["text"] for c in sse_data(streamed) if isinstance(c, dict) and c.get("choices"))
    assert text == "call [PHONE]"
