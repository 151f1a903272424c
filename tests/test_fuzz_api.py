"""The front door fuzzed: schemathesis against the gateway's own ``/openapi.json`` (docs/fuzzing.md).

A real gateway (uvicorn on a random port) with a master key, a metrics token and a scripted fake
upstream. Schemathesis sends every documented operation its examples, coverage cases (boundaries,
each constraint broken in turn, undeclared methods) and random data, valid and invalid, then walks
the documented links (create a key, then read, change and revoke it; upload a file, then batch it;
submit a job, then read and cancel it). Every answer must not be a server error and must be what
the document says: its status code, content type, body (JSON and each SSE event) and headers.

Schemathesis runs as its CLI in a child process: its pytest plugin's lazy loading (the only way to
fuzz a server a fixture starts) breaks on pytest 9 (``Function._nodeid``). Deterministic: a fixed
seed and derandomized generation, so CI sends the same requests on every run; a failure prints each
finding with a curl command that reproduces it. ``-m 'not fuzz'`` leaves the three runs out; the
regression tests of what they found stay in.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter

from tests.access_support import MASTER, config, create_key, gateway
from tests.fakes import FakeUpstream
from tokenway.api.control import control_app

METRICS_TOKEN = "metrics-token-test"
EXAMPLES = 25  # random cases per operation in the fuzzing phase; the master-key run takes ~30 s on 2 cores
# The run's settings: its checks (set here, not as flags, which would override the per-operation ones),
# the models it names in bodies, and the few per-operation exceptions, each with its reason.
SETTINGS = """
# Every check but positive_data_acceptance: a request the schema allows may still be refused for what a
# schema cannot say: a model or guard profile this gateway does not have, webhooks without a signing
# secret, best_of below n, an integer past 64 bits. Those are 4xx with the envelope, held to the rest.
[checks]
enabled = true
positive_data_acceptance.enabled = false

# An unknown header or query parameter is ignored, as HTTP APIs do (OpenAI's too): a request with one
# is not invalid, so the negative phase must not send it as one.
[generation]
allow-extra-parameters = false

# The models the fuzzer names in bodies (most of the time): the document names none (it is open to all).
[dictionaries.models]
values = ["m", "other"]

[parameters]
"body.model" = { dictionary = "models", probability = 0.8 }

# DELETE /admin/keys/{id} revokes a key and keeps its record (the usage ledger names it): reading it
# afterwards shows "revoked": true, by design, where use_after_free expects a 404.
[[operations]]
include-path = "/admin/keys/{key_id}"
include-method = "GET"
checks.use_after_free.enabled = false

[[operations]]
include-path = ["/v1/chat/completions", "/v1/completions", "/chat", "/v1/messages", "/v1/responses"]
# The data plane's documented 5xx: the backend failed (502: as when a reply asked to be JSON is not,
# retries and all: the fake backend answers prose), no capacity (503), the backend timed out (504).
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "502", "503", "504"]

# /ready answers 503 while starting or draining: documented, and what a load balancer reads.
[[operations]]
include-path = "/ready"
checks.not_a_server_error.expected-statuses = ["2xx", "4xx", "503"]
"""


@pytest.fixture(scope="module")
def upstream_for_fuzz() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def served(upstream_for_fuzz: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with gateway(config(upstream_for_fuzz), tmp_path_factory.mktemp("fuzz"), metrics_token=METRICS_TOKEN) as (
        base, _,
    ):
        yield base


def fuzz(base: str, key: str, workdir: Path, *selection: str, phases: str = "examples,coverage,fuzzing,stateful",
         ) -> None:
    """Run schemathesis against ``base`` as ``key``; fail with its report of every finding."""
    settings = workdir / "schemathesis.toml"
    settings.write_text(SETTINGS)
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(settings), "run", f"{base}/openapi.json",
        "--header", f"Authorization: Bearer {key}", "--seed", "24", "--generation-deterministic",
        "--max-examples", str(EXAMPLES), "--phases", phases, "--mode", "all",
        "--continue-on-failure", "--workers", "1",
        "--request-timeout", "30", "--output-truncate", "false", "--no-color", *selection,
    ]
    run = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=400)
    report = run.stdout + run.stderr
    assert run.returncode == 0, f"schemathesis found problems (exit {run.returncode}):\n{report}"
    assert "passed" in report and " generated" in report, report


@pytest.mark.fuzz
@pytest.mark.timeout(420)
def test_every_operation_as_the_master_key(served: str, tmp_path: Path) -> None:
    # POST /admin/drain would stop the gateway taking calls for the rest of the run: it has its own test.
    fuzz(served, MASTER, tmp_path, "--exclude-path", "/admin/drain")


@pytest.mark.fuzz
@pytest.mark.timeout(420)
def test_the_data_plane_and_jobs_as_a_virtual_key(served: str, tmp_path: Path) -> None:
    key = create_key(served, name="fuzz", models=["m"])["key"]  # "other" is the same 404 as no model at all
    fuzz(served, key, tmp_path, "--include-path-regex", "^/(v1|chat)")


@pytest.mark.fuzz
@pytest.mark.timeout(420)
def test_drain(upstream_for_fuzz: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream_for_fuzz), tmp_path / "data") as (base, _):
        fuzz(base, MASTER, tmp_path, "--include-path", "/admin/drain", "--include-path", "/ready",
             phases="examples,coverage,fuzzing")  # no links between the two
        assert httpx.get(base + "/ready").status_code == 503


# ---- what the fuzzer found, fixed at the source, pinned here ----------------------------------------

def admin(base: str, method: str, path: str, **kwargs: object) -> httpx.Response:
    return httpx.request(method, base + path, headers={"Authorization": f"Bearer {MASTER}"}, **kwargs)  # type: ignore[arg-type]


def test_null_lists_on_a_key_clear_them(served: str) -> None:
    # Was a 500 (plain text): KeyRecord takes no null for these.
    created = admin(served, "POST", "/admin/keys", json={"guards": None, "models": None, "labels": None})
    assert created.status_code == 200, created.text
    assert (created.json()["guards"], created.json()["models"], created.json()["labels"]) == ([], [], {})
    key_id = created.json()["id"]
    admin(served, "PATCH", f"/admin/keys/{key_id}", json={"models": ["m"]})
    patched = admin(served, "PATCH", f"/admin/keys/{key_id}", json={"models": None})
    assert patched.status_code == 200 and patched.json()["models"] == []


@pytest.mark.parametrize(("field", "value"), [("expires_at", False), ("rpm", "5"), ("budget", {"amount": 1e308})])
def test_key_fields_are_what_the_schema_says(served: str, field: str, value: object) -> None:
    # false was taken as the timestamp 0.0 and "5" as 5; a budget of 1e308 overflowed the counters (500).
    answer = admin(served, "POST", "/admin/keys", json={field: value})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"].startswith(field)


def test_a_wrong_method_names_every_method_the_path_takes(served: str) -> None:
    # Starlette's Allow named only the first route's methods (POST for /admin/keys), and the
    # envelope handler dropped it altogether.
    answer = admin(served, "PUT", "/admin/keys")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET, POST"
    assert answer.json()["error"]["code"] == "method_not_allowed"


async def test_an_unhandled_error_is_the_envelope() -> None:
    # Was Starlette's plain-text "Internal Server Error"; the OpenAI SDK could not read it.
    router = APIRouter()

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    transport = httpx.ASGITransport(control_app(lambda: True, routers=[router]), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        answer = await client.get("/boom")
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "internal_error"
    assert "a bug" not in answer.text  # the traceback goes to the log, not to the client
