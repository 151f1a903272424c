"""Three gateways behind nginx, sharing Redis and Postgres: a rolling restart under load loses nothing.

Run by ``make fleet-test`` (it takes about a minute and most of this machine's two cores): each
gateway is ``tokenway serve`` started the way the image starts it (its entrypoint, command and
environment, read from the Dockerfile; loopback address, own port and data dir), nginx runs the
shipped conf with only its upstream addresses and port rewritten, and ``tokenway bench`` is the
load: streamed and not, at half the fleet's measured capacity. The upstream is the scripted fake,
in its own process.

With ``TOKENWAY_FLEET_RESULTS=FILE`` the measured numbers (capacity, restart times, first-chunk
latency direct and through nginx) are written there as JSON: benchmarks/fleet/ records them.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.access_support import (
    MASTER,
    MESSAGES,
    REDIS,
    RESERVED_COST,
    SERVED_COST,
    config,
    create_key,
    drop_schema,
    pg_schema,
    pg_url,
)
from tests.fakes import WORDS, FakeUpstream
from tests.servers import free_port, wait_until_ready
from tests.test_deploy_files import DOCKERFILE, local_nginx_conf

pytestmark = [
    pytest.mark.skipif(not os.environ.get("TOKENWAY_FLEET_TEST"),
                       reason="make fleet-test runs it (three gateways, nginx, Redis, Postgres)"),
    pytest.mark.timeout(600),
]

BIN = Path(sys.executable).parent
CHUNK_DELAY = 0.05  # six chunks: a 0.3 s stream
DRAIN_DELAY_S = 1.0
SHUTDOWN_GRACE_S = 10.0


def image_command_and_env() -> tuple[list[str], dict[str, str]]:
    """The runtime stage's ENTRYPOINT + CMD and ENV, as the container would start."""
    runtime = DOCKERFILE.read_text().split(" AS runtime\n", 1)[1].split("\nFROM ", 1)[0]
    entrypoint = json.loads(re.search(r"(?m)^ENTRYPOINT (\[.*\])$", runtime).group(1))  # type: ignore[union-attr]
    command = json.loads(re.search(r"(?m)^CMD (\[.*\])$", runtime).group(1))  # type: ignore[union-attr]
    block = re.search(r"(?ms)^ENV (.*?[^\\])$", runtime).group(1)  # type: ignore[union-attr]
    env = dict(re.findall(r"([A-Z_]+)=(\S+)", block))
    env.pop("PATH")  # /opt/tokenway/bin: here, the venv's bin
    return [str(BIN / entrypoint[0]), *entrypoint[1:], *command], env


class Replica:
    """One ``tokenway serve`` process on a fixed port; replaced on the same port in a rolling restart."""

    def __init__(self, port: int, env: dict[str, str], workdir: Path) -> None:
        self.port, self.env, self.workdir = port, env, workdir
        self.generation = 0
        self.start_s = 0.0  # how long the last start took, to ready
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        self.generation += 1
        data = self.workdir / f"data-{self.port}-{self.generation}"
        command, image_env = image_command_and_env()
        env = {**os.environ, **image_env, **self.env, "TOKENWAY_PORT": str(self.port), "TOKENWAY_DATA_DIR": str(data),
               "TOKENWAY_HOST": "127.0.0.1"}  # the image binds 0.0.0.0; tests stay on loopback
        self.log = self.workdir / f"gateway-{self.port}-{self.generation}.log"
        began = time.monotonic()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        wait_until_ready(self.base, 90, lambda: self.proc is not None and self.proc.poll() is None)
        self.start_s = time.monotonic() - began

    def stop(self, timeout: float) -> tuple[int, float]:
        """SIGTERM, as docker stop or the kubelet sends it; (exit status, seconds until it exited)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code, time.monotonic() - started


def _serve_upstream(chunk_delay: float, conn: multiprocessing.connection.Connection) -> None:
    upstream = FakeUpstream(chunk_delay=chunk_delay).start()
    conn.send(upstream.port)
    conn.recv()  # until the test is done


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    """The fake upstream in its own process: in the test's, it would share the GIL with the clients."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve_upstream, args=(CHUNK_DELAY, child), daemon=True)
    proc.start()
    assert parent.poll(30), "fake upstream did not start"
    yield FakeUpstream(port=parent.recv())  # where it listens (its scripts run in the child)
    parent.send("stop")
    proc.join(5)
    if proc.is_alive():
        proc.terminate()


@pytest.fixture
def fleet(tmp_path: Path, upstream: FakeUpstream) -> Iterator[tuple[str, list[Replica], str]]:
    """(nginx base URL, the three replicas, the Postgres DSN they share)."""
    nginx = shutil.which("nginx")
    if nginx is None:
        pytest.fail("nginx is missing (Debian package nginx; .ci/run installs it)")
    (tmp_path / "tokenway.yaml").write_text(config(upstream))
    schema = pg_schema()
    env = {
        "TOKENWAY_CONFIG": str(tmp_path / "tokenway.yaml"), "TOKENWAY_MASTER_KEY": MASTER,
        "TOKENWAY_REDIS_URL": REDIS, "TOKENWAY_DATABASE_URL": pg_url(schema),
        "TOKENWAY_TRUSTED_PROXIES": "127.0.0.1", "TOKENWAY_LOG_LEVEL": "warning",
        "TOKENWAY_DRAIN_DELAY_S": str(DRAIN_DELAY_S), "TOKENWAY_SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S),
    }
    replicas = [Replica(free_port(), env, tmp_path) for _ in range(3)]
    listen = free_port()
    conf = local_nginx_conf(tmp_path, [r.port for r in replicas], listen)
    proxy = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for replica in replicas:
            replica.start()
        base = f"http://127.0.0.1:{listen}"
        wait_until_ready(base, 10)
        yield base, replicas, pg_url(schema)
    finally:
        for replica in replicas:
            if replica.proc is not None and replica.proc.poll() is None:
                replica.stop(SHUTDOWN_GRACE_S + 5)
        proxy.send_signal(signal.SIGQUIT)
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
        drop_schema(schema)


def bench(base: str, out: Path, *args: str) -> subprocess.Popen[bytes]:
    """``tokenway bench`` against the fleet, writing its results JSON to ``out``."""
    command = [str(BIN / "tokenway"), "bench", "--base-url", base + "/v1", "--model", "m", "--api-key", MASTER,
               "--input-len", "32,0", "--output-len", "6,0", "--progress", "off", "--json", str(out), *args]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finished(proc: subprocess.Popen[bytes], timeout: float) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-2000:]


def requests_of(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    run = json.loads(path.read_text())["runs"][0]
    return run["summary"], run["requests"]


def first_chunk_seconds(base: str, n: int) -> list[float]:
    """Seconds from sending a streamed request to reading its first chunk, one request at a time."""
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    times = []
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {MASTER}"}) as client:
        for _ in range(n):
            started = time.perf_counter()
            with client.stream("POST", base + "/v1/chat/completions", json=body) as response:
                lines = response.iter_lines()
                for line in lines:
                    if line.startswith("data: {"):
                        times.append(time.perf_counter() - started)
                        break
                for _ in lines:  # the rest of the stream, so the connection is reused
                    pass
    return times


def metric(base: str, name: str) -> float:
    text = httpx.get(base + "/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


async def burst(base: str, key: str, n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        body = {"model": "m", "messages": MESSAGES, "max_tokens": 6}
        calls = [client.post(base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
                 for _ in range(n)]
        return list(await asyncio.gather(*calls))


@pytest.fixture
def results() -> Iterator[dict[str, Any]]:
    """What the test measured, written to TOKENWAY_FLEET_RESULTS when it ends (failed or not)."""
    measured: dict[str, Any] = {}
    yield measured
    path = os.environ.get("TOKENWAY_FLEET_RESULTS")
    if path:
        Path(path).write_text(json.dumps(measured, indent=2) + "\n")


def test_rolling_restart_under_load_loses_nothing(
    fleet: tuple[str, list[Replica], str], tmp_path: Path, results: dict[str, Any]
) -> None:
    base, replicas, _ = fleet

    # Unbuffered through nginx: the first chunk comes as soon as it does from a gateway directly.
    first_chunk_seconds(base, 5)  # warm both paths' connections
    direct = first_chunk_seconds(replicas[0].base, 40)
    proxied = first_chunk_seconds(base, 40)
    results["first_chunk_ms"] = {"direct_median": statistics.median(direct) * 1e3,
                                 "nginx_median": statistics.median(proxied) * 1e3}
    # A buffered stream would arrive whole, ~0.25 s after its first chunk was written.
    assert statistics.median(proxied) - statistics.median(direct) < 0.05, results

    # Capacity: what the fleet completes at saturation (streamed).
    finished(bench(base, tmp_path / "capacity.json", "--concurrency", "96", "--duration", "6"), 120)
    capacity = requests_of(tmp_path / "capacity.json")[0]["request_throughput"]
    results["capacity_req_s"] = capacity
    half = capacity / 2

    # Half of it during the restart: a quarter streamed, a quarter not, for as long as the roll
    # takes at the speed the replicas started at (~45 s on a quiet 2-core box, minutes on a busy
    # one, where a start can also take several times longer than the first ones did).
    start_s = max(r.start_s for r in replicas)
    duration = round(max(45.0, 8 + len(replicas) * (DRAIN_DELAY_S + 3 * start_s + 2)))
    results["load_s"] = duration
    loads = {
        "streamed": bench(base, tmp_path / "streamed.json", "--rate", f"{half / 2:.1f}", "--duration", str(duration)),
        "json": bench(base, tmp_path / "json.json", "--rate", f"{half / 2:.1f}", "--duration", str(duration),
                      "--extra-body", '{"stream": false}'),
    }
    started = time.monotonic()
    time.sleep(4)
    restarts: list[dict[str, Any]] = []
    results["restarts"] = restarts
    for replica in replicas:
        sigterm_at = time.strftime("%H:%M:%S")
        code, seconds = replica.stop(DRAIN_DELAY_S + SHUTDOWN_GRACE_S + 5)
        drained_s = time.monotonic() - started
        log = replica.log.read_text()
        replica.start()
        # Calls that reached it while it drained were refused with 503 at once (logged at error
        # level) and nginx sent them to another replica: the clients saw none of them.
        refused = log.count('"status":503')
        restarts.append({"port": replica.port, "sigterm_at": sigterm_at, "exit": code, "stop_s": seconds,
                         "drained_s": drained_s, "start_s": replica.start_s, "refused": refused})
        assert code in (0, -signal.SIGTERM), log[-2000:]  # a clean drain: uvicorn re-raises SIGTERM once done
        assert seconds < DRAIN_DELAY_S + SHUTDOWN_GRACE_S, restarts
        time.sleep(1)
    results["rolled_s"] = time.monotonic() - started
    for proc in loads.values():
        finished(proc, duration + 60)
    # Every replica drained while the load ran, and the first ones' replacements started under it
    # (the last replacement may finish starting after the load on a busy box).
    assert drained_s < duration, ("the restart should have happened under load", results)

    for name in loads:
        summary, records = requests_of(tmp_path / f"{name}.json")
        failed = [r for r in records if r.get("error")]
        results[name] = {"completed": summary["requests"]["completed"], "failed": len(failed),
                         "req_s": summary["request_throughput"]}
        assert not failed, (name, failed[:5], (tmp_path / "notable.log").read_text()[-3000:], results)
        assert summary["requests"]["completed"] >= 0.5 * half / 2 * duration  # the load was applied
        # No stream cut short: every answer ended with the upstream's finish reason and its usage
        # (the stream's last chunk), for all of the upstream's words.
        short = [r for r in records if r["finish_reason"] != "stop" or r["server_tokens"] != len(WORDS)]
        assert not short, (name, short[:3])


def test_limits_and_budgets_hold_across_replicas(fleet: tuple[str, list[Replica], str]) -> None:
    base, replicas, _ = fleet
    before = [metric(r.base, "tokenway_requests_total") for r in replicas]

    # A key's rpm is one bucket in Redis, whichever replica nginx picks.
    limited = create_key(base, rpm=20)
    time.sleep(0.5)  # every replica's key cache refreshes every 0.2 s
    started = time.monotonic()
    answers = asyncio.run(burst(base, limited["key"], 90))
    refill = int((time.monotonic() - started) * 20 / 60) + 1
    served = sum(1 for r in answers if r.status_code == 200)
    assert 20 <= served <= 20 + refill
    assert {r.status_code for r in answers} == {200, 429}

    # A budget is one reservation ledger: ten requests' worth serves ten, across three processes.
    budgeted = create_key(base, budget={"amount": 10 * RESERVED_COST / 1e9, "period": "day"})
    time.sleep(0.5)
    answers = asyncio.run(burst(base, budgeted["key"], 150))
    assert sum(1 for r in answers if r.status_code == 200) == 10
    refused = [r for r in answers if r.status_code != 200]
    assert {r.status_code for r in refused} == {429} and refused[0].json()["error"]["code"] == "insufficient_quota"
    assert spent(base, budgeted["key"], 10 * SERVED_COST) == 10 * SERVED_COST

    # nginx spread the calls: every replica answered some of them.
    after = [metric(r.base, "tokenway_requests_total") for r in replicas]
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


def spent(base: str, key: str, expected: int) -> int:
    """The key's spend from the shared ledger, once it shows ``expected`` (replicas flush in batches)."""
    deadline = time.monotonic() + 10
    while True:
        usage = httpx.get(base + "/v1/usage", headers={"Authorization": f"Bearer {key}"}, timeout=5).json()
        cost = sum(row["cost_nanos"] for row in usage["by_model"])
        if cost >= expected or time.monotonic() > deadline:
            return int(cost)
        time.sleep(0.2)
