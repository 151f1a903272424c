"""``tokenway jobs`` against a real gateway over a socket: submit --wait, list, show, cancel, results, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.access_support import MASTER, config, create_key, gateway
from tests.fakes import FakeUpstream
from tests.jobs_support import auth, jsonl, wait_job
from tests.servers import free_port
from tokenway.jobs.cli import main

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream(first_delay=0.0, chunk_delay=0.0).start()
    yield server
    server.stop()


def with_slow_model(upstream: FakeUpstream) -> str:
    """The test config, plus a model ``slow`` whose upstream never answers."""
    slow = f"  - name: slow\n    deployments:\n      - provider: openai\n        api_base: {upstream.url('hang')}\n"
    return config(upstream).replace("models:\n", "models:\n" + slow, 1)


def cli(capsys: pytest.CaptureFixture[str], base: str, key: str | None, *args: str) -> tuple[int, str, str]:
    """Run ``tokenway jobs ARGS`` in this process; (exit status, stdout, stderr).

    The gateway runs in this process too: its JSON log lines (httpx's records among them) are taken out.
    """
    capsys.readouterr()
    code = main([*args, "--base-url", base, *(["--api-key", key] if key else [])])
    out, err = (
        "".join(line for line in text.splitlines(keepends=True) if not line.startswith('{"ts":'))
        for text in capsys.readouterr()
    )
    assert "Traceback" not in out + err
    return code, out, err


def write_lines(path: Path, *lines: Any) -> Path:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines))
    return path


def test_submit_wait_writes_one_result_per_line(upstream: FakeUpstream, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    source = write_lines(
        tmp_path / "prompts.jsonl",
        *({"messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 5} for i in range(4)),
        {"custom_id": "mine", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "other", "messages": [{"role": "user", "content": "q"}]}},
    )
    output = tmp_path / "out" / "results.jsonl"
    output.parent.mkdir()
    with gateway(config(upstream), tmp_path / "data") as (base, _):
        key = create_key(base)["key"]
        code, out, err = cli(capsys, base, key, "submit", str(source), "--model", "m", "--wait",
                             "--output", str(output), "--poll", "0.05", "--metadata", "run=nightly")
        assert code == 0, err
        batch_id = out.strip()
        assert batch_id.startswith("batch_")
        assert f"{batch_id} completed: 5 done, 0 failed of 5" in err and "5 results in" in err
        results = jsonl(output.read_bytes())
        assert sorted(r["custom_id"] for r in results) == ["line-1", "line-2", "line-3", "line-4", "mine"]
        assert all(r["response"]["status_code"] == 200 and r["error"] is None for r in results)
        assert not (output.parent / "results.errors.jsonl").exists()
        assert sorted(seen.body["model"] for seen in upstream.seen) == ["m", "m", "m", "m", "other"]
        batch = httpx.get(f"{base}/v1/batches/{batch_id}", headers=auth(key)).json()
        assert batch["metadata"] == {"run": "nightly"}

        # The same batch through `results`, and in the lists and views.
        code, _, err = cli(capsys, base, key, "results", batch_id, "--output", str(tmp_path / "again.jsonl"))
        assert code == 0 and (tmp_path / "again.jsonl").read_bytes() == output.read_bytes()
        code, out, _ = cli(capsys, base, key, "list", "--batches")
        assert code == 0 and batch_id in out and "completed" in out
        code, out, _ = cli(capsys, base, key, "show", batch_id)
        assert code == 0 and "5 done, 0 failed of 5" in out and "run=nightly" in out
        code, out, _ = cli(capsys, base, key, "show", batch_id, "--json")
        assert code == 0 and orjson.loads(out)["request_counts"] == {"total": 5, "completed": 5, "failed": 0}


def test_bad_lines_land_in_the_error_file_by_their_line_numbers(upstream: FakeUpstream, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    source = write_lines(tmp_path / "mixed.jsonl", {"prompt": "one"}, b"{not json", b"",
                         {"prompt": "two", "model": "unknown-model"}, {"prompt": "three"})
    with gateway(config(upstream), tmp_path / "data") as (base, _):
        key = create_key(base)["key"]
        code, _, err = cli(capsys, base, key, "submit", str(source), "--model", "m", "--wait",
                           "--output", str(tmp_path / "r.jsonl"), "--poll", "0.05")
        assert code == 1, err  # the batch completed, some of its lines failed
        assert "2 results in" in err and "2 errors in" in err
        assert sorted(r["custom_id"] for r in jsonl((tmp_path / "r.jsonl").read_bytes())) == ["line-1", "line-5"]
        assert upstream.seen[0].path.endswith("/v1/completions")  # inferred from the bodies' "prompt"
        errors = jsonl((tmp_path / "r.errors.jsonl").read_bytes())
        assert sorted(e["error"]["line"] for e in errors) == [2, 4]  # as numbered in the user's file


def test_list_show_and_cancel_jobs(upstream: FakeUpstream, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    with gateway(with_slow_model(upstream), tmp_path / "data") as (base, _):
        key = create_key(base)["key"]
        done = httpx.post(base + "/v1/async/chat/completions", json=CHAT, headers=auth(key)).json()
        wait_job(base, key, done["id"])
        stuck = httpx.post(base + "/v1/async/chat/completions", json={**CHAT, "model": "slow"},
                           headers=auth(key)).json()

        code, out, _ = cli(capsys, base + "/v1/", key, "list")  # an OpenAI-style base URL works too
        assert code == 0 and done["id"] in out and stuck["id"] in out
        code, out, _ = cli(capsys, base, key, "list", "--status", "succeeded", "--json")
        assert code == 0 and [job["id"] for job in orjson.loads(out)["data"]] == [done["id"]]
        code, out, _ = cli(capsys, base, key, "show", done["id"])
        assert code == 0 and "succeeded" in out and "Hello from the fake upstream." in out

        code, out, _ = cli(capsys, base, key, "cancel", stuck["id"])
        assert code == 0 and out.strip() == f"{stuck['id']}: cancelled"
        code, _, err = cli(capsys, base, key, "cancel", stuck["id"])
        assert code == 1 and "already finished (cancelled)" in err and "HTTP 409" in err

        # The master key sees every tenant's jobs, with their owners and the queue's counts.
        code, out, err = cli(capsys, base, MASTER, "list", "--all")
        assert code == 0 and done["id"] in out and "owner" in out and "1 succeeded" in err
        # Another key sees none of them.
        other = create_key(base)["key"]
        code, out, _ = cli(capsys, base, other, "list", "--json")
        assert code == 0 and orjson.loads(out)["data"] == []
        code, _, err = cli(capsys, base, other, "show", done["id"])
        assert code == 1 and f"No job with id '{done['id']}'" in err


def test_bad_input_is_a_message_and_an_exit_status(upstream: FakeUpstream, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    code, _, err = cli(capsys, nowhere, None, "list")
    assert code == 1 and "cannot reach the gateway" in err and "--base-url" in err
    code, _, err = cli(capsys, nowhere, None, "submit", str(tmp_path / "missing.jsonl"), "--model", "m")
    assert code == 2 and "cannot read" in err and "missing.jsonl" in err
    bare = write_lines(tmp_path / "bare.jsonl", {"messages": [{"role": "user", "content": "hi"}]})
    code, _, err = cli(capsys, nowhere, None, "submit", str(bare))
    assert code == 2 and "line 1" in err and "--model" in err
    code, _, err = cli(capsys, nowhere, None, "submit", str(bare), "--model", "m", "--output", "r.jsonl")
    assert code == 2 and "--output goes with --wait" in err
    code, _, err = cli(capsys, nowhere, None, "show", "nope")
    assert code == 2 and "neither a job id" in err
    with gateway(config(upstream), tmp_path / "data") as (base, _):
        key = create_key(base)["key"]
        code, _, err = cli(capsys, base, key, "results", "batch_nope")
        assert code == 1 and "No batch with id 'batch_nope'" in err and "HTTP 404" in err
        code, _, err = cli(capsys, base, key, "cancel", "job_nope")
        assert code == 1 and "No job with id 'job_nope'" in err
        code, _, err = cli(capsys, base, key, "submit", str(bare), "--model", "no-such-model", "--wait",
                           "--poll", "0.05")
        assert code == 1 and "0 done, 1 failed of 1" in err
        code, _, err = cli(capsys, base, key, "submit", str(bare), "--model", "m", "--window", "forever")
        assert code == 1 and "completion_window" in err
        code, _, err = cli(capsys, base, None, "list")
        assert code == 1 and "TOKENWAY_API_KEY" in err and "HTTP 401" in err


def test_ctrl_c_while_waiting_leaves_the_batch_running(upstream: FakeUpstream, tmp_path: Path) -> None:
    source = write_lines(tmp_path / "slow.jsonl", {"messages": [{"role": "user", "content": "hi"}]})
    with gateway(with_slow_model(upstream), tmp_path / "data") as (base, _):
        key = create_key(base)["key"]
        env = {**os.environ, "TOKENWAY_BASE_URL": base, "TOKENWAY_API_KEY": key}
        proc = subprocess.Popen([sys.executable, "-m", "tokenway", "jobs", "submit", str(source), "--model", "slow",
                                 "--wait", "--poll", "0.05"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                # A shell's background job (make test &, a CI runner) ignores SIGINT,
                                # and the child would inherit that: give it the default back.
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 30
        while not upstream.seen:  # the line is running: the client is waiting on it
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.05)
        # The line may start before the client has read the batch's creation (the workers claim lines
        # as they are written): give it a moment to be in its wait, where Ctrl-C is meant to land.
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        batch_id = err.split(":", 1)[0].strip()
        assert "keeps running" in err and f"tokenway jobs results {batch_id}" in err and "Traceback" not in err
        batch = httpx.get(f"{base}/v1/batches/{batch_id}", headers=auth(key)).json()
        assert batch["status"] == "in_progress"
        results = subprocess.run([sys.executable, "-m", "tokenway", "jobs", "results", batch_id],
                                 env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path)
        assert results.returncode == 1 and "is in_progress (0 of 1 lines finished)" in results.stderr
        cancelled = subprocess.run([sys.executable, "-m", "tokenway", "jobs", "cancel", batch_id],
                                   env=env, capture_output=True, text=True, timeout=30)
        assert cancelled.returncode == 0 and batch_id in cancelled.stdout
