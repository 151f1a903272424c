"""Batch throughput against live traffic, the async submit rate, and the gateway's RSS across a batch.

Against a scripted upstream that answers every request after 50 ms (``upstream.py``, its own
process), with one virtual key, every default policy on:

- ``live``      the reference: N requests sent live through ``tokenway serve`` by C concurrent
                connections (an aiohttp client in this process);
- ``embedded``  the same N requests as one Batch API batch (``/v1/files`` + ``/v1/batches``), run by
                the workers inside the gateway process (``jobs.workers = C``);
- ``celery1``   the batch run by one ``tokenway worker`` process (``--concurrency C``), the gateway only
                queueing (Redis broker, job store in a fresh Postgres schema, a shared files directory);
- ``celery2``   the same with two worker processes, each ``--concurrency C``: a second worker is a
                second machine's worth of capacity (see RESULTS.md for why each keeps C);
- ``submit``    N ``POST /v1/async/chat/completions`` from C concurrent connections to a gateway with
                ``jobs.workers = 1`` (so the submit path is what is measured), jobs/s.

A batch's wall time runs from ``POST /v1/batches`` to the poll that sees it ``completed`` (validation
and the output file included). Every mode starts its own gateway (and workers) with a fresh data
directory, and first sends 2·C live requests (and, with Celery, 2·C async jobs it waits for) to warm
the connections. The gateway's RSS is sampled every 0.2 s from the end of the upload to the end of
the batch. CPU seconds of the gateway, the workers, the upstream and this client are read from
``/proc`` around each measurement.

    .venv/bin/python benchmarks/jobs/run.py [--lines 10000] [--concurrency 64] [--rounds 2]
        [--modes live,embedded,celery1,celery2,submit] [--delay 0.05] [--warm-batches K]
        [--profile DIR] [--out benchmarks/jobs/results.json]

To measure a commit other than the working tree: ``git worktree add --detach /tmp/tree COMMIT`` and
``PYTHONPATH=/tmp/tree PYTHONSAFEPATH=1`` in front of the command (the processes it starts inherit it).

Every process it starts gets SIGTERM when this one ends (``PR_SET_PDEATHSIG``), also on Ctrl-C or a
kill; Celery's Redis keys and the Postgres schema are dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
MASTER = "sk-bench-master"
PG = "postgresql://127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "question"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Processes:
    """Every process this run starts; all stopped (SIGTERM, then SIGKILL) by ``stop_all``."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                    preexec_fn=_die_with_parent)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc, 10.0)


def cpu_s(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.NoSuchProcess:
        return 0.0


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def config_yaml(upstream_port: int, workers: int, prefix: str) -> str:
    return f"""
models:
  - name: m
    deployments:
      - provider: openai
        api_base: http://127.0.0.1:{upstream_port}/v1
        price: {{input_per_1m: 1.0, output_per_1m: 2.0}}
jobs:
  workers: {workers}
  celery_prefix: {prefix}
"""


@dataclass
class Gateway:
    base: str
    proc: subprocess.Popen[bytes]
    key: str = ""
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    procs: Processes
    upstream_port: int
    upstream_pid: int
    round: int = 1
    schemas: list[str] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)

    @contextlib.asynccontextmanager
    async def gateway(self, name: str, workers: int, celery_workers: int = 0) -> AsyncIterator[Gateway]:
        """``tokenway serve`` (and ``tokenway worker`` processes), each with a fresh data directory."""
        run = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.tmp))
        prefix = "tw-bench-" + secrets.token_hex(4)
        (run / "tokenway.yaml").write_text(config_yaml(self.upstream_port, workers, prefix))
        env = {"TOKENWAY_MASTER_KEY": MASTER, "TOKENWAY_DATA_DIR": str(run / "data"), "TOKENWAY_DRAIN_DELAY_S": "0"}
        if celery_workers:
            schema = await make_schema()
            self.schemas.append(schema)
            self.prefixes.append(prefix)
            env |= {"TOKENWAY_DATABASE_URL": f"{PG}?search_path={schema}", "TOKENWAY_JOBS_BROKER_URL": REDIS,
                    "TOKENWAY_FILES_DIR": str(run / "files")}
        port = free_port()
        proc = self.procs.start([str(VENV_BIN / "tokenway"), "serve", "--config", str(run / "tokenway.yaml"),
                                 "--port", str(port), "--log-level", "warning"], run / "gateway.log", env)
        gw = Gateway(f"http://127.0.0.1:{port}", proc)
        try:
            await wait_ready(gw.base, proc, run / "gateway.log")
            for i in range(celery_workers):
                gw.workers.append(self.procs.start(
                    [str(VENV_BIN / "tokenway"), "worker", "--config", str(run / "tokenway.yaml"),
                     "--concurrency", str(self.args.concurrency), "--loglevel", "warning"],
                    run / f"worker{i}.log", env))
            async with aiohttp.ClientSession() as s:
                async with s.post(gw.base + "/admin/keys", json={"name": "bench"},
                                  headers={"Authorization": f"Bearer {MASTER}"}) as r:
                    assert r.status == 200, await r.text()
                    gw.key = (await r.json())["key"]
            await asyncio.sleep(1.5)  # the key reaches the key cache (access.keys_refresh_s)
            yield gw
        finally:
            for worker in gw.workers:
                await asyncio.to_thread(self.procs.stop, worker, 60.0)
            await asyncio.to_thread(self.procs.stop, proc)
            if not self.args.keep:
                shutil.rmtree(run, ignore_errors=True)


async def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    async with aiohttp.ClientSession() as s:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the gateway exited ({proc.returncode}); its log: {log}")
            with contextlib.suppress(aiohttp.ClientError):
                async with s.get(base + "/ready") as r:
                    if r.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway was not ready in 90 s; its log: {log}")
            await asyncio.sleep(0.2)


async def make_schema() -> str:
    import asyncpg

    name = "tw_bench_" + secrets.token_hex(4)
    conn = await asyncpg.connect(PG)
    await conn.execute(f"CREATE SCHEMA {name}")
    await conn.close()
    return name


async def drop_schemas(names: list[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG)
    for name in names:
        await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    await conn.close()


def drop_redis_keys(prefixes: list[str]) -> None:
    import redis

    client = redis.Redis.from_url(REDIS)
    for prefix in prefixes:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    client.close()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


async def send_many(base: str, path: str, key: str, count: int, concurrency: int, expect: int) -> float:
    """``count`` POSTs of the chat body over ``concurrency`` connections; the wall time in seconds."""
    body = orjson.dumps(CHAT)
    left = count
    bad: list[str] = []

    async def one_connection(session: aiohttp.ClientSession) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            async with session.post(base + path, data=body, headers=auth(key)) as r:
                data = await r.read()
                if r.status != expect and len(bad) < 5:
                    bad.append(f"{r.status} {data[:200]!r}")

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(one_connection(session) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    if bad:
        raise RuntimeError(f"{path}: unexpected answers, e.g. {bad}")
    return wall


async def warm_jobs(gw: Gateway, count: int) -> None:
    """Submit ``count`` async jobs and wait until every one has finished (workers up and connected)."""
    async with aiohttp.ClientSession() as s:
        ids = []
        for _ in range(count):
            async with s.post(gw.base + "/v1/async/chat/completions", json=CHAT, headers=auth(gw.key)) as r:
                assert r.status == 202, await r.text()
                ids.append((await r.json())["id"])
        deadline = time.monotonic() + 120
        while ids:
            async with s.get(f"{gw.base}/v1/async/{ids[-1]}", headers=auth(gw.key)) as r:
                job = await r.json()
            if job["status"] in ("succeeded", "failed", "cancelled", "expired"):
                assert job["status"] == "succeeded", job
                ids.pop()
                continue
            if time.monotonic() > deadline:
                raise RuntimeError(f"warm-up jobs not done in 120 s: {job}")
            await asyncio.sleep(0.1)


def batch_file(lines: int) -> bytes:
    return b"".join(orjson.dumps({
        "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": f"question {i}"}]},
    }) + b"\n" for i in range(lines))


class Sampler:
    """RSS (MB) of some processes every ``interval`` seconds, with the time since the start."""

    def __init__(self, pids: list[int], interval: float = 0.2) -> None:
        self.pids = pids
        self.interval = interval
        self.samples: list[tuple[float, list[float]]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def sample(self) -> None:
        self.samples.append((round(time.monotonic() - self._t0, 2), [round(rss_mb(p), 1) for p in self.pids]))

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.sample()


@contextlib.contextmanager
def profiled(args: argparse.Namespace, name: str, pids: dict[str, int]) -> Iterator[None]:
    """With --profile DIR: py-spy records each process (raw collapsed stacks) while the block runs."""
    if not args.profile:
        yield
        return
    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    spies = [subprocess.Popen([str(VENV_BIN / "py-spy"), "record", "--pid", str(pid), "--rate", "50", "--nonblocking",
                               "--format", "raw", "--output", str(out / f"{name}-{who}.txt")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
             for who, pid in pids.items()]
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()


class CpuMeter:
    """CPU used by some processes (and this client) since it was made: % of one core, ms per request."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before = {name: cpu_s(pid) for name, pid in pids.items()}
        self.t0 = time.perf_counter()
        own = os.times()
        self.own = own.user + own.system

    def read(self, requests: int) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        own = os.times()
        used = {name: cpu_s(pid) - self.before[name] for name, pid in self.pids.items()}
        used["client"] = own.user + own.system - self.own
        workers = [v for name, v in used.items() if name.startswith("worker")]
        if workers:
            used = {k: v for k, v in used.items() if not k.startswith("worker")} | {"workers": sum(workers)}
        return ({f"cpu_{name}_pct": round(100 * v / wall, 1) for name, v in used.items()}
                | {f"cpu_{name}_ms": round(1000 * v / requests, 3) for name, v in used.items()})


async def run_live(b: Bench) -> dict[str, Any]:
    a = b.args
    async with b.gateway("live", workers=1) as gw:
        await send_many(gw.base, "/v1/chat/completions", gw.key, 2 * a.concurrency, a.concurrency, 200)
        meter = CpuMeter({"gateway": gw.pid, "upstream": b.upstream_pid})
        sampler = Sampler([gw.pid])
        sampler.start()
        with profiled(a, f"live{b.round}", {"gateway": gw.pid}):
            wall = await send_many(gw.base, "/v1/chat/completions", gw.key, a.lines, a.concurrency, 200)
        await sampler.stop()
        return {"wall_s": round(wall, 2), "per_s": round(a.lines / wall, 1), **meter.read(a.lines),
                **rss_summary(sampler)}


async def run_batch(b: Bench, name: str, celery_workers: int) -> dict[str, Any]:
    a = b.args
    async with b.gateway(name, workers=a.concurrency, celery_workers=celery_workers) as gw:
        await send_many(gw.base, "/v1/chat/completions", gw.key, 2 * a.concurrency, a.concurrency, 200)
        if celery_workers:
            await warm_jobs(gw, 2 * a.concurrency * celery_workers)
        data = batch_file(a.lines)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
            warm_rss = []
            for _ in range(a.warm_batches):  # the same batch before the measured one, on this gateway
                warm_rss.append(round(rss_mb(gw.pid), 1))
                await run_to_end(s, gw, (await upload(s, gw, data))[0], a.lines)
            file_id, upload_s = await upload(s, gw, data)
            pids = [gw.pid] + [w.pid for w in gw.workers]
            sampler = Sampler(pids)
            sampler.start()
            meter = CpuMeter({"gateway": gw.pid, "upstream": b.upstream_pid}
                             | {f"worker{i}": w.pid for i, w in enumerate(gw.workers)})
            with profiled(a, f"{name}{b.round}", {"gateway": gw.pid}
                          | {f"worker{i}": w.pid for i, w in enumerate(gw.workers)}):
                t0 = time.perf_counter()
                await run_to_end(s, gw, file_id, a.lines)
                wall = time.perf_counter() - t0
                cpu = meter.read(a.lines)
            await sampler.stop()
        result = {"wall_s": round(wall, 2), "per_s": round(a.lines / wall, 1), "upload_s": round(upload_s, 2),
                  **cpu, **rss_summary(sampler)}
        if warm_rss:
            result["rss_before_warm_batches_mb"] = warm_rss
        if celery_workers:
            result["workers_rss_mb"] = [[s[1][i + 1] for s in (sampler.samples[0], sampler.samples[-1])]
                                        for i in range(celery_workers)]
        return result


async def upload(s: aiohttp.ClientSession, gw: Gateway, data: bytes) -> tuple[str, float]:
    """``POST /v1/files``: the file's id and the seconds the upload took."""
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", data, filename="bench.jsonl", content_type="application/jsonl")
    t0 = time.perf_counter()
    async with s.post(gw.base + "/v1/files", data=form, headers={"Authorization": f"Bearer {gw.key}"}) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["id"]), time.perf_counter() - t0


async def run_to_end(s: aiohttp.ClientSession, gw: Gateway, file_id: str, lines: int) -> None:
    """``POST /v1/batches`` and poll it until it has ended; every line must have succeeded."""
    async with s.post(gw.base + "/v1/batches", headers=auth(gw.key), json={
            "input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}) as r:
        assert r.status == 200, await r.text()
        batch_id = (await r.json())["id"]
    while True:
        async with s.get(f"{gw.base}/v1/batches/{batch_id}", headers=auth(gw.key)) as r:
            batch = await r.json()
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            break
        counts = batch.get("request_counts") or {}
        near = counts.get("total") and counts["completed"] + counts["failed"] >= 0.95 * counts["total"]
        await asyncio.sleep(0.05 if near else 0.25)
    counts = batch["request_counts"]
    if batch["status"] != "completed" or counts["completed"] != lines:
        raise RuntimeError(f"batch {batch_id} ended {batch['status']} with {counts}")


async def run_submit(b: Bench) -> dict[str, Any]:
    a = b.args
    async with b.gateway("submit", workers=1) as gw:
        await send_many(gw.base, "/v1/async/chat/completions", gw.key, 2 * a.concurrency, a.concurrency, 202)
        meter = CpuMeter({"gateway": gw.pid, "upstream": b.upstream_pid})
        with profiled(a, f"submit{b.round}", {"gateway": gw.pid}):
            wall = await send_many(gw.base, "/v1/async/chat/completions", gw.key, a.submits, a.concurrency, 202)
        return {"wall_s": round(wall, 2), "per_s": round(a.submits / wall, 1), **meter.read(a.submits)}


def rss_summary(sampler: Sampler) -> dict[str, Any]:
    series = [s[1][0] for s in sampler.samples]
    return {"rss_start_mb": series[0], "rss_peak_mb": max(series), "rss_end_mb": series[-1],
            "rss_growth_pct": round(100 * (series[-1] - series[0]) / series[0], 1),
            "rss_series": [[t, v[0]] for t, v in sampler.samples]}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from tokenway.plots import line_chart

    series = [(f"{r['mode']} round {r['round']}", [p[0] for p in r["rss_series"]], [p[1] for p in r["rss_series"]])
              for r in results if r["mode"] in ("embedded", "celery1", "celery2") and "rss_series" in r]
    if series:
        path.write_text(line_chart(series, "Gateway RSS across a batch (from the end of the upload)",
                                   "seconds since the batch was created", "RSS (MB)", ymin=0))


def table(results: list[dict[str, Any]], lines: int, submits: int, concurrency: int) -> str:
    by_mode: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_mode.setdefault(r["mode"], []).append(r)
    live = statistics.median(r["per_s"] for r in by_mode["live"]) if "live" in by_mode else None
    rounds = max(len(v) for v in by_mode.values())
    out = [f"N={lines} (submit: {submits}), C={concurrency}, medians of {rounds} rounds",
           "| mode | wall s | per s | ratio to live | CPU ms per request: gateway / workers / upstream / client "
           "| RSS start / peak / end MB | each round (per s) |",
           "| --- | ---: | ---: | ---: | --- | --- | --- |"]
    for mode in ("live", "embedded", "celery1", "celery2", "submit"):
        rs = by_mode.get(mode)
        if not rs:
            continue

        def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return float(statistics.median(r.get(key, 0.0) for r in rs))

        ratio = f"{med('per_s') / live:.2f}" if live and mode in ("embedded", "celery1", "celery2") else ""
        cpu = " / ".join(f"{med(f'cpu_{who}_ms'):.2f}" for who in ("gateway", "workers", "upstream", "client"))
        rss = (f"{med('rss_start_mb'):.0f} / {med('rss_peak_mb'):.0f} / {med('rss_end_mb'):.0f}"
               if "rss_start_mb" in rs[0] else "")
        each = " / ".join(f"{r['per_s']:,.0f}" for r in rs)
        out.append(f"| {mode} | {med('wall_s'):.2f} | {med('per_s'):,.0f} | {ratio} | {cpu} | {rss} | {each} |")
    return "\n".join(out)


async def main_async(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tw-jobs-bench-"))
    procs = Processes()
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    bench: Bench | None = None
    try:
        port = free_port()
        upstream = procs.start([str(VENV_BIN / "python"), str(HERE / "upstream.py"), "--port", str(port),
                                "--delay", str(args.delay)], tmp / "upstream.log")
        for _ in range(50):
            if "ready" in (tmp / "upstream.log").read_text():
                break
            await asyncio.sleep(0.1)
        bench = Bench(args, tmp, procs, port, upstream.pid)
        modes = args.modes.split(",")
        for round_ in range(1, args.rounds + 1):
            bench.round = round_
            for mode in modes:
                started = time.strftime("%H:%M:%S")
                if mode == "live":
                    r = await run_live(bench)
                elif mode == "embedded":
                    r = await run_batch(bench, mode, 0)
                elif mode.startswith("celery"):
                    r = await run_batch(bench, mode, int(mode[len("celery"):]))
                elif mode == "submit":
                    r = await run_submit(bench)
                else:
                    raise SystemExit(f"unknown mode {mode!r}")
                r = {"mode": mode, "round": round_, "started": started,
                     "load_avg": round(os.getloadavg()[0], 1), **r}
                results.append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "rss_series"}), flush=True)
        print(table(results, args.lines, args.submits, args.concurrency))
    finally:
        procs.stop_all()
        if bench is not None:
            with contextlib.suppress(Exception):
                await drop_schemas(bench.schemas)
            with contextlib.suppress(Exception):
                drop_redis_keys(bench.prefixes)
        if args.keep:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000, help="batch lines, and live requests (default 10000)")
    parser.add_argument("--submits", type=int, default=10_000, help="async jobs submitted in 'submit'")
    parser.add_argument("--concurrency", "-c", type=int, default=64, help="C: client connections, jobs.workers, "
                        "--concurrency of each Celery worker (default 64)")
    parser.add_argument("--delay", type=float, default=0.05, help="the upstream's answer time in s (default 0.05)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default="live,embedded,celery1,celery2,submit")
    parser.add_argument("--out", default=str(HERE / "results.json"), help="raw results (and rss.svg beside it)")
    parser.add_argument("--warm-batches", type=int, default=0, metavar="K", help="batch rows: the same batch K "
                        "times on the gateway before the measured one (a step in RSS: once per process, or per batch?)")
    parser.add_argument("--profile", metavar="DIR", help="py-spy each measured process into DIR (raw stacks; "
                        "summarise with profile_top.py); the profiler's own CPU slows the run")
    parser.add_argument("--keep", action="store_true", help="keep the processes' logs (printed at the end)")
    args = parser.parse_args()
    import uvloop

    results: list[dict[str, Any]] = []
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        uvloop.run(main_async(args, results))
    if args.out and results:  # what was measured, also when stopped part-way
        out = Path(args.out)
        out.write_bytes(orjson.dumps({"argv": sys.argv[1:], "cpus": os.cpu_count(), "results": results},
                                     option=orjson.OPT_INDENT_2))
        plot(results, out.with_name("rss.svg"))


if __name__ == "__main__":
    main()
