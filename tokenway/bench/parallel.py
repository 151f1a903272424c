"""Spread one load shape over several client processes, so the client is not the bottleneck.

One asyncio loop saturates somewhere around a few hundred concurrent streams (the audit's
event-loop-lag check says when). Each worker process runs its share of the load on its own
loop; their records merge into one RunResult. This is sound because `time.perf_counter()` reads
a system-wide monotonic clock (CLOCK_MONOTONIC on Linux), so timestamps from different processes
are comparable, and all workers start on one agreed instant.

Shares: closed-loop users and request counts are divided; an open-loop rate R becomes N
independent streams of rate R/N. For Poisson arrivals the merged stream is exactly Poisson(R);
for gamma arrivals the merge is only approximately gamma, so burstiness is best measured with
one worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import Any

from tokenway.bench.client import Endpoint
from tokenway.bench.loadgen import LoadShape, RunResult, run
from tokenway.bench.workload import Session

START_DELAY_S = 0.1


def _split(total: int | None, k: int, n: int) -> int | None:
    if total is None:
        return None
    return total // n + (1 if k < total % n else 0)


def worker_shape(shape: LoadShape, k: int, n: int) -> LoadShape:
    """Worker k's share of `shape` when split over n processes."""
    return dataclasses.replace(
        shape,
        concurrency=_split(shape.concurrency, k, n),
        rate=None if shape.rate is None else shape.rate / n,
        max_concurrency=_split(shape.max_concurrency, k, n) or None,
        num_requests=_split(shape.num_requests, k, n),
        warmup_requests=_split(shape.warmup_requests, k, n) or 0,
        seed=shape.seed * 1009 + k,
    )


def _worker(conn: Connection, ep: Endpoint, workload_args: Any, shape: LoadShape, k: int, n: int) -> None:
    # Imported here: the CLI builds the workload from its arguments, and the CLI imports this module.
    from tokenway.bench.cli import build_workload

    base = build_workload(workload_args)

    def workload(i: int) -> Session:
        return base(i * n + k)  # interleave session ids so workers send distinct sessions

    conn.send("ready")
    start_at = conn.recv()

    async def go() -> RunResult:
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
        return await run(ep, workload, shape)

    try:
        import uvloop

        result = uvloop.run(go())
    except ImportError:
        result = asyncio.run(go())
    for rec in result.records:
        rec.session = rec.session * n + k
    conn.send(result)
    conn.close()


def merge(results: list[RunResult], shape: LoadShape) -> RunResult:
    """One RunResult from the workers' results, records renumbered in send order."""
    records = sorted((r for res in results for r in res.records), key=lambda r: r.start)
    for i, rec in enumerate(records):
        rec.index = i
    return RunResult(
        shape=shape,
        records=records,
        t0=min(r.t0 for r in results),
        measure_start=min(r.measure_start for r in results),
        measure_end=max(r.measure_end for r in results),
        loop_lag=[x for r in results for x in r.loop_lag],
        wall_clock_start=min(r.wall_clock_start for r in results),
    )


def run_in_processes(ep: Endpoint, workload_args: Any, shape: LoadShape, workers: int) -> RunResult:
    """Run `shape` split over `workers` processes; blocks until all are done."""
    ctx = multiprocessing.get_context("spawn")
    shares = [(k, worker_shape(shape, k, workers)) for k in range(workers)]
    # A worker with no users or no requests would only wait: leave it out.
    shares = [(k, s) for k, s in shares if s.concurrency != 0 and s.num_requests != 0]
    links = []
    for k, share in shares:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, ep, workload_args, share, k, workers), daemon=True)
        proc.start()
        links.append((parent, proc))
    try:
        for parent, _ in links:
            if parent.recv() != "ready":
                raise RuntimeError("a bench worker process failed to start")
        start_at = time.perf_counter() + START_DELAY_S
        for parent, _ in links:
            parent.send(start_at)
        results = [parent.recv() for parent, _ in links]
    except EOFError as exc:
        raise RuntimeError("a bench worker process died; run with --workers 1 to see its error") from exc
    finally:
        for _, proc in links:
            proc.join(5)
    return merge(results, shape)
