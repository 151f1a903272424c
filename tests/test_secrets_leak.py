"""No secret and no prompt leaks out of the gateway, whatever happens.

A gateway process with a master key, an upstream key (``api_key_env``), virtual keys made through
the admin API, tracing to the console, and content logging off, then on, runs a scripted session:
good calls and streams, a prompt with keys pasted in, a wrong key, a revoked key, invalid bodies
with a marker inside the bad field, an upstream 500, a backend that refuses the upstream key and
says it back, a stream the upstream breaks off, an async job and a batch, and every admin listing.
Then everything it emitted (its log lines and spans, /metrics, every answer's headers and body) is
searched for the secrets and the marker. Secrets appear nowhere. The marker, a prompt's words,
appears only in the request log line's ``content`` field, and only with content logging on
(docs/security.md says so).
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.access_support import gateway_process
from tests.fakes import FakeUpstream
from tests.servers import write_config

UPSTREAM_ENV = "TW_LEAK_TEST_UPSTREAM_KEY"
SCRUBBED = "[upstream key]"  # what a relayed backend error says instead of the gateway's credentials


def _config(upstream: FakeUpstream, content: bool, header_key: str) -> str:
    def model(name: str, scenario: str) -> str:
        return f"""  - name: {name}
    deployments:
      - provider: openai
        api_base: {upstream.url(scenario)}
        api_key_env: {UPSTREAM_ENV}
        headers: {{x-api-key: {header_key}}}
"""
    models = [("m", "ok"), ("broken", "status500"), ("cut", "reset"), ("refused", "echokey"), ("echoes", "echokey400")]
    return f"""models:
{"".join(model(name, scenario) for name, scenario in models)}
logging:
  content: {str(content).lower()}
observability:
  tracing: {{enabled: true, exporter: console}}
access:
  keys_refresh_s: 0.2
  ledger_flush_s: 0.2
"""


class Session:
    """Calls to the gateway; every answer's status line, headers and body kept as text."""

    def __init__(self, base: str, key: str) -> None:
        self.base, self.key = base, key
        self.transcript: list[str] = []

    def call(self, method: str, path: str, key: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key or self.key}", **kwargs.pop("headers", {})}
        response = httpx.request(method, self.base + path, headers=headers, timeout=30, **kwargs)
        self.keep(response)
        return response

    def keep(self, response: httpx.Response) -> None:
        head = "\n".join(f"{name}: {value}" for name, value in response.headers.items())
        self.transcript.append(f"{response.request.method} {response.request.url} -> {response.status_code}\n"
                               f"{head}\n\n{response.text}")

    def chat(self, key: str | None = None, **body: Any) -> httpx.Response:
        return self.call("POST", "/v1/chat/completions", key, json=body)

    def wait(self, path: str, done: set[str], key: str | None = None) -> dict[str, Any]:
        deadline = time.time() + 30
        while True:
            state: dict[str, Any] = httpx.get(self.base + path, headers={"Authorization": f"Bearer {key or self.key}"},
                                              timeout=10).json()
            if state["status"] in done:
                return state
            assert time.time() < deadline, f"{path} still {state['status']}"
            time.sleep(0.1)


@pytest.fixture
def upstream() -> Any:
    server = FakeUpstream(first_delay=0.0, chunk_delay=0.0).start()
    yield server
    server.stop()


@pytest.mark.parametrize("content", [False, True], ids=["content-logging-off", "content-logging-on"])
def test_no_secret_or_prompt_leaks_from_a_session_with_errors(
    upstream: FakeUpstream, tmp_path: Path, content: bool
) -> None:
    master = "sk-master-" + secrets.token_hex(16)
    upstream_key = "sk-upstream-" + secrets.token_hex(16)
    wrong = "sk-wrong-" + secrets.token_hex(16)
    header_key = "hk-" + secrets.token_hex(16)  # a credential in the deployment's headers (Azure's api-key)
    marker = "MARKER" + secrets.token_hex(8)
    prompt = [{"role": "user", "content": f"Tell me about {marker}, please."}]
    output = tmp_path / "gateway.out"
    path = write_config(tmp_path, _config(upstream, content, header_key))
    env = {"TOKENWAY_MASTER_KEY": master, UPSTREAM_ENV: upstream_key}
    with gateway_process(path, tmp_path / "data", output=output, log_level="debug", **env) as base:
        admin = Session(base, master)
        created = httpx.post(base + "/admin/keys", json={"name": "app"}, headers={"Authorization": f"Bearer {master}"})
        key, key_id = created.json()["key"], created.json()["id"]  # the one answer that may hold a secret
        gone = httpx.post(base + "/admin/keys", json={"name": "old"}, headers={"Authorization": f"Bearer {master}"})
        revoked = gone.json()["key"]
        assert admin.call("DELETE", f"/admin/keys/{gone.json()['id']}").status_code == 200
        time.sleep(0.5)  # keys_refresh_s: the revocation reaches the key cache
        s = Session(base, key)

        # Good calls and streams, with the key and with the master key.
        assert s.chat(model="m", messages=prompt).status_code == 200
        streamed = s.chat(model="m", messages=prompt, stream=True, stream_options={"include_usage": True})
        assert streamed.status_code == 200 and "[DONE]" in streamed.text
        assert s.call("POST", "/v1/completions", json={"model": "m", "prompt": marker}).status_code == 200
        assert s.chat(master, model="m", messages=prompt).status_code == 200
        pasted = [{"role": "user", "content": f"{marker}: is {key} or {wrong} or Bearer {master} my key?"}]
        assert s.chat(model="m", messages=pasted).status_code == 200  # content logging redacts them
        # Keys refused.
        assert s.chat(wrong, model="m", messages=prompt).status_code == 401
        assert s.call("POST", "/v1/chat/completions", headers={"Authorization": "", "api-key": wrong},
                      json={"model": "m", "messages": prompt}).status_code == 401
        assert s.chat(revoked, model="m", messages=prompt).status_code == 401
        # Invalid bodies, the marker inside the bad field.
        for bad in (
            {"model": "m", "messages": [{"role": marker, "content": "x"}]},
            {"model": "m", "messages": marker},
            {"model": "m", "messages": prompt, "temperature": marker},
            {"model": "m", "messages": prompt, "stream": marker},
            {"model": "m", "messages": prompt, "max_tokens": marker},
            {"model": "m", "messages": prompt, "stop": [marker] * 1000},
            {"model": "m", "messages": prompt, "tools": [{"type": "function", "function": marker}]},
            {"model": "m", "messages": prompt, "n": marker, "logprobs": marker},
        ):
            answer = s.chat(**bad)
            assert answer.status_code == 400, (bad, answer.text)
        truncated = b'{"model": "m", "messages": [{"role": "user", "content": "' + marker.encode()
        assert s.call("POST", "/v1/chat/completions", content=truncated).status_code == 400
        assert s.chat(model="no-such-model", messages=prompt).status_code == 404
        # The upstream fails: a 500, a refusal of the gateway's own key that says the key back, and a
        # stream broken off mid-way.
        assert s.chat(model="broken", messages=prompt).status_code >= 500
        assert s.chat(model="refused", messages=prompt).status_code >= 400
        assert s.chat(model="refused", messages=prompt, stream=True).status_code >= 400
        echoed = s.chat(model="echoes", messages=prompt)  # a 4xx is relayed, less the credentials
        assert echoed.status_code == 400
        assert echoed.json()["error"]["message"] == f"Incorrect API key provided: Bearer {SCRUBBED} (or {SCRUBBED})"
        cut = s.chat(model="cut", messages=prompt, stream=True)
        assert cut.status_code == 200 and '"error"' in cut.text
        # An async job (and one refused at submit) and a batch.
        job = s.call("POST", "/v1/async/chat/completions", json={"model": "m", "messages": prompt}).json()
        assert s.wait(f"/v1/async/{job['id']}", {"succeeded", "failed"})["status"] == "succeeded"
        assert s.call("POST", "/v1/async/chat/completions",
                      json={"model": "m", "messages": prompt, "temperature": marker}).status_code == 400
        lines = b"".join(orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                       "body": body}) + b"\n"
                         for i, body in enumerate([{"model": "m", "messages": prompt},
                                                   {"model": "m", "messages": prompt, "temperature": marker}]))
        uploaded = s.call("POST", "/v1/files", files={"file": ("in.jsonl", lines)}, data={"purpose": "batch"}).json()
        batch = s.call("POST", "/v1/batches", json={"input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions",
                                                     "completion_window": "24h"}).json()
        done = s.wait(f"/v1/batches/{batch['id']}", {"completed", "failed"})
        assert done["status"] == "completed" and done["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
        s.call("GET", f"/v1/files/{done['output_file_id']}/content")
        s.call("GET", f"/v1/files/{done['error_file_id']}/content")
        time.sleep(0.5)  # ledger_flush_s: usage rows are written
        # Everything an operator or a tenant can list.
        for path in ("/admin/keys", f"/admin/keys/{key_id}", "/admin/usage?group_by=key", "/admin/usage?group_by=model",
                     "/admin/status", "/admin/jobs", "/admin/routing", "/admin/deployments", "/metrics"):
            assert admin.call("GET", path).status_code == 200, path
        for path in ("/v1/models", "/v1/usage", "/v1/async", "/v1/files", "/v1/batches", f"/v1/batches/{batch['id']}",
                     "/health", "/ready"):
            assert s.call("GET", path).status_code == 200, path
    emitted = output.read_text()
    answers = "\n".join(admin.transcript + s.transcript)

    # Not vacuous: the upstream got its key and the prompt; the log has request lines and spans.
    assert upstream.seen and all(seen.headers["authorization"] == f"Bearer {upstream_key}" for seen in upstream.seen)
    assert all(seen.headers["x-api-key"] == header_key for seen in upstream.seen)
    assert any(marker in orjson.dumps(seen.body).decode() for seen in upstream.seen)
    assert emitted.count('"event":"request"') >= 20 and '"trace_id"' in emitted and '"span_id"' in emitted
    assert "tokenway_requests_total" in answers

    for name, secret in {"master key": master, "upstream key": upstream_key, "upstream header": header_key,
                         "virtual key": key, "revoked key": revoked, "wrong key": wrong}.items():
        for text in (secret, secret[-20:]):  # the whole secret, or its last 20 characters alone
            assert text not in emitted, f"the {name} is in the gateway's output"
            assert text not in answers, f"the {name} is in an answer: {_around(answers, text)}"
    assert marker not in answers, f"the prompt's marker is in an answer: {_around(answers, marker)}"
    outside_content = _without_content_fields(emitted)
    assert marker not in outside_content, f"the marker is in the output: {_around(outside_content, marker)}"
    assert (marker in emitted) == content  # content logging on: the prompt is in the request lines' content
    assert ("is [key] or [key] or Bearer [key] my key?" in emitted) == content


def _without_content_fields(output: str) -> str:
    """The output with the ``content`` field of every request log line taken out."""
    lines = []
    for line in output.splitlines():
        if line.startswith('{"') and '"event":"request"' in line:
            record = orjson.loads(line)
            record.pop("content", None)
            line = orjson.dumps(record).decode()
        lines.append(line)
    return "\n".join(lines)


def _around(text: str, needle: str) -> str:
    at = text.find(needle)
    return text[max(0, at - 300):at + 300]
