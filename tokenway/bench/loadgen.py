"""Load generation: closed-loop (fixed concurrency) and open-loop (arrival process) runs.

Open-loop runs fix every intended send time before the run from the arrival process, then
record the actual send time too: the difference is the schedule lag, the size of any
coordinated omission (the client sending late because it, or a concurrency cap, was busy).
A ticker task measures the event loop's own lateness, which bounds how wrong any timestamp
taken on this loop can be.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import aiohttp

from tokenway.bench.client import Endpoint, Exchange, build_payload, make_session, send
from tokenway.bench.records import RequestRecord, build_record
from tokenway.bench.workload import Session, Workload

LAG_TICK_S = 0.01


@dataclass(frozen=True)
class LoadShape:
    """How load is offered. Exactly one of `concurrency` (closed loop) or `rate` (open loop, req/s;
    `math.inf` sends everything at once). Stop after `num_requests` or `duration_s` (whichever
    comes first); warm-up requests are sent first and excluded from results."""

    concurrency: int | None = None
    rate: float | None = None
    arrival: str = "poisson"  # poisson | gamma | constant
    burstiness: float = 1.0  # gamma shape k: < 1 burstier than Poisson, > 1 more regular
    max_concurrency: int | None = None
    ramp_up_s: float = 0.0
    num_requests: int | None = None
    duration_s: float | None = None
    warmup_requests: int = 0
    warmup_s: float = 0.0
    seed: int = 0

    @property
    def label(self) -> str:
        if self.rate is not None:
            rate = "inf" if math.isinf(self.rate) else f"{self.rate:g}"
            cap = f" cap={self.max_concurrency}" if self.max_concurrency else ""
            return f"rate={rate}/s {self.arrival}{cap}"
        return f"concurrency={self.concurrency}"


@dataclass
class RunResult:
    """Raw outcome of one run; `tokenway.bench.metrics.summarize` turns it into numbers."""

    shape: LoadShape
    records: list[RequestRecord]
    t0: float
    measure_start: float
    measure_end: float
    loop_lag: list[float] = field(default_factory=list)
    wall_clock_start: float = 0.0


def arrival_times(shape: LoadShape) -> Iterator[float]:
    """Intended send offsets (seconds from run start) for an open-loop run.

    Arrivals are generated at unit rate in "operational time" u and mapped through the inverse
    of the cumulative rate L(t), so a linear ramp-up keeps the requested distribution shape.
    """
    rate = shape.rate or math.inf
    if math.isinf(rate):
        while True:
            yield 0.0
    rng = random.Random(shape.seed)
    k = shape.burstiness
    ramp = shape.ramp_up_s
    u = 0.0
    while True:
        if shape.arrival == "constant":
            u += 1.0
        elif shape.arrival == "gamma":
            u += rng.gammavariate(k, 1.0 / k)
        else:
            u += rng.expovariate(1.0)
        # L(t) = rate*t^2/(2*ramp) during the ramp, then rate*ramp/2 + rate*(t - ramp).
        if ramp > 0 and u < rate * ramp / 2:
            yield math.sqrt(2 * ramp * u / rate)
        else:
            yield ramp + (u - rate * ramp / 2) / rate if ramp > 0 else u / rate


class _Run:
    def __init__(
        self,
        ep: Endpoint,
        workload: Workload,
        shape: LoadShape,
        on_done: Callable[[RequestRecord], None] | None,
    ) -> None:
        self.ep, self.workload, self.shape, self.on_done = ep, workload, shape, on_done
        self.headers = ep.request_headers()
        self.pending: list[tuple[Exchange, RequestRecord]] = []
        self.issued = 0
        self.sessions = 0
        self.t0 = 0.0
        self.measure_start: float | None = None
        self.stop_at = math.inf
        self.lag: list[float] = []
        self.done = False

    def _budget_left(self) -> bool:
        limit = self.shape.num_requests
        total = None if limit is None else limit + self.shape.warmup_requests
        return (total is None or self.issued < total) and time.perf_counter() < self.stop_at

    def _is_warmup(self, now: float) -> bool:
        return self.issued < self.shape.warmup_requests or now < self.t0 + self.shape.warmup_s

    async def run_session(
        self, http: aiohttp.ClientSession, sid: int, session: Session, scheduled: float | None
    ) -> None:
        history: list[dict[str, str]] = [{"role": "system", "content": session.system}] if session.system else []
        for turn_no, turn in enumerate(session.turns):
            if not self._budget_left():
                return
            now = time.perf_counter()
            warm = self._is_warmup(now)
            if not warm and self.measure_start is None:
                self.measure_start = now
                if self.shape.duration_s is not None:
                    self.stop_at = min(self.stop_at, now + self.shape.duration_s)
            rec = RequestRecord(
                index=self.issued,
                session=sid,
                turn=turn_no,
                max_tokens=turn.max_tokens,
                start=now,
                end=now,
                scheduled=scheduled if turn_no == 0 else None,
                group=session.group,
                warmup=warm,
            )
            self.issued += 1
            history.append({"role": "user", "content": turn.prompt})
            ex = await send(http, self.ep, build_payload(self.ep, history, turn.max_tokens), self.headers)
            if turn_no + 1 < len(session.turns):
                # The next turn needs this reply's text, so parse now rather than after the run.
                build_record(ex, rec)
                if not rec.ok:
                    self._finish(ex, rec, parsed=True)
                    return
                history.append({"role": "assistant", "content": rec.text})
                self._finish(ex, rec, parsed=True)
            else:
                self._finish(ex, rec, parsed=False)

    def _finish(self, ex: Exchange, rec: RequestRecord, *, parsed: bool) -> None:
        # Parsing is deferred to the end of the run so JSON work never delays another stream's
        # timestamps; a light status check is enough for live progress.
        rec.start, rec.end, rec.status = ex.start, ex.end, ex.status
        if not parsed:
            rec.error = ex.error or (None if ex.status == 200 else f"http_{ex.status}")
        self.pending.append((ex, rec) if not parsed else (Exchange(start=-1.0), rec))
        if self.on_done:
            self.on_done(rec)

    async def ticker(self) -> None:
        expected = time.perf_counter() + LAG_TICK_S
        while not self.done:
            await asyncio.sleep(LAG_TICK_S)
            now = time.perf_counter()
            self.lag.append(max(0.0, now - expected))
            expected = now + LAG_TICK_S

    async def closed_loop(self, http: aiohttp.ClientSession) -> None:
        conc = self.shape.concurrency or 1

        async def worker(i: int) -> None:
            if self.shape.ramp_up_s > 0:
                await asyncio.sleep(self.shape.ramp_up_s * i / conc)
            while self._budget_left():
                sid = self.sessions
                self.sessions += 1
                await self.run_session(http, sid, self.workload(sid), None)

        await asyncio.gather(*(worker(i) for i in range(conc)))

    async def open_loop(self, http: aiohttp.ClientSession) -> None:
        cap = asyncio.Semaphore(self.shape.max_concurrency) if self.shape.max_concurrency else None
        tasks: set[asyncio.Task[None]] = set()

        async def one(sid: int, scheduled: float) -> None:
            if cap is None:
                await self.run_session(http, sid, self.workload(sid), scheduled)
                return
            async with cap:
                await self.run_session(http, sid, self.workload(sid), scheduled)

        launched = 0
        limit = self.shape.num_requests
        total = None if limit is None else limit + self.shape.warmup_requests
        for offset in arrival_times(self.shape):
            if total is not None and launched >= total:
                break
            due = self.t0 + offset
            if due >= self.stop_at:
                break
            # Sleeping 0 when behind still yields, so sends already due start before more are made.
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            task = asyncio.create_task(one(launched, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            launched += 1
        if tasks:
            await asyncio.gather(*tasks)

    async def execute(self) -> RunResult:
        conns = self.shape.max_concurrency or self.shape.concurrency or 1024
        async with make_session(self.ep, conns) as http:
            wall = time.time()
            self.t0 = time.perf_counter()
            if self.shape.duration_s is not None and self.shape.warmup_requests == 0:
                self.stop_at = self.t0 + self.shape.warmup_s + self.shape.duration_s
            tick = asyncio.create_task(self.ticker())
            try:
                if self.shape.rate is not None:
                    await self.open_loop(http)
                else:
                    await self.closed_loop(http)
            finally:
                self.done = True
                await tick
        records = [build_record(ex, rec) if ex.start >= 0 else rec for ex, rec in self.pending]
        records.sort(key=lambda r: r.index)
        measured = [r for r in records if not r.warmup]
        start = self.measure_start if self.measure_start is not None else self.t0
        end = max((r.end for r in measured), default=start)
        return RunResult(self.shape, records, self.t0, start, end, self.lag, wall)


async def run(
    ep: Endpoint, workload: Workload, shape: LoadShape, on_done: Callable[[RequestRecord], None] | None = None
) -> RunResult:
    """Run one load shape against the endpoint and return the raw records."""
    if (shape.concurrency is None) == (shape.rate is None):
        raise ValueError("give exactly one of concurrency (closed loop) or rate (open loop)")
    if shape.num_requests is None and shape.duration_s is None:
        raise ValueError("give num_requests or duration_s so the run ends")
    if shape.rate is not None and math.isinf(shape.rate) and shape.num_requests is None:
        raise ValueError("an infinite rate sends everything at once: give a request count (-n), not a duration")
    return await _Run(ep, workload, shape, on_done).execute()
