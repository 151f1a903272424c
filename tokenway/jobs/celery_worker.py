"""``tokenway worker``: a Celery worker that runs jobs through the gateway's own core.

Each worker process hosts one gateway core (``Gateway`` from ``tokenway/app.py``: providers,
keys, limits, budgets, cache, routing, the ledger) on an asyncio event loop in a thread of its
own, and Celery's threads pool (``-P threads``, ``jobs.workers`` threads) runs the tasks: a task
claims its job in the job store, hands it to the core's ``Executor`` and blocks until the
outcome is recorded. So a job takes exactly the path a live request takes, and the job store's
claim (a fresh run token, renewed while the job runs) decides who may record the one result.

Celery's settings do what they are meant for (``celery_app`` in ``celery_dispatch.py``):

- ``acks_late``: the message is acknowledged when the job has ended. A worker killed mid-job
  leaves it unacknowledged; RabbitMQ delivers it again as soon as the connection drops, Redis
  once ``jobs.celery_visibility_timeout_s`` has passed. The copy claims the job once the dead
  worker's lease has run out (``jobs.lease_s``); until then the task retries itself (Celery's
  ``retry`` with a countdown), and a job already finished is acknowledged and left alone.
- ``prefetch_multiplier=1``: a worker holds no more messages than it has free threads.
- A failure of the store or the broker mid-task (not the job's own failure: that is a result)
  is retried by Celery with backoff (``autoretry_for``).
- SIGTERM is Celery's warm shutdown: no new messages, the jobs running finish and are
  acknowledged, then the core stops. Celery's cold shutdown (SIGQUIT) cannot stop a task of the
  threads pool, so it waits the same way. SIGKILL is a crash: the jobs run again elsewhere
  (late acks, above), so give a worker a grace period as long as its jobs take.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from tokenway.config import ConfigError, GatewayConfig, Settings, SettingsError, load_config, load_settings
from tokenway.jobs.celery_dispatch import TASK, celery_app, queue_names

if TYPE_CHECKING:
    from celery import Celery, Task

    from tokenway.app import Gateway

T = TypeVar("T")
STARTUP_S = 120.0  # for the core to open its stores
SHUTDOWN_S = 60.0  # for the core to give running jobs back and flush the ledger
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")  # a line per task received, per task ended
STORE_RETRIES = 20  # tries of a task whose store or broker call failed, with backoff up to a minute


class WorkerCore:
    """One gateway core for a worker process, on its own event loop in a background thread."""

    def __init__(self, settings: Settings, config: GatewayConfig, metrics_port: int | None = None) -> None:
        from tokenway.app import Gateway

        self.gateway: Gateway = Gateway(settings, config)
        self.stopping = False
        self._metrics_port = metrics_port
        self._metrics_server: web.AppRunner | None = None
        self._loop = _new_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tokenway-core", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._call(self.gateway.startup(), STARTUP_S)
        if self._metrics_port is not None:
            self._call(self._serve_metrics(self._metrics_port), STARTUP_S)

    async def _serve_metrics(self, port: int) -> None:
        """``/metrics`` (the jobs' requests, tokens, latencies: they are made here, not in the gateway)
        and ``/health`` for a liveness probe."""
        metrics = self.gateway.metrics

        async def exposition(request: web.Request) -> web.Response:
            return web.Response(body=metrics.render(), headers={"Content-Type": METRICS_TYPE})

        async def health(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        app = web.Application()
        app.router.add_get("/metrics", exposition)
        app.router.add_get("/health", health)
        self._metrics_server = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._metrics_server.setup()
        await web.TCPSite(self._metrics_server, self.gateway.settings.host, port).start()

    def run(self, job_id: str) -> float | None:
        """Run the job if this process can claim it (blocks the calling thread until its outcome is
        recorded); None when nothing is left to do for this message, else the seconds to wait
        before trying again (another run holds the job)."""
        return self._call(self._run(job_id), None)

    async def _run(self, job_id: str) -> float | None:
        jobs = self.gateway.jobs
        executor, store = jobs.executor, jobs.service.store
        assert executor is not None, "the core's jobs start with the gateway"
        job = await store.claim_job(job_id, executor.new_token(), executor.lease_until(), time.time())
        if job is not None:
            keys = self.gateway.access.keys
            if job.owner not in ("master", "anonymous") and keys.by_id(job.owner) is None:
                await keys.refresh()  # a key made a moment ago on a gateway: this process has not loaded it yet
            try:
                await executor.execute(job)
                return None
            except asyncio.CancelledError:
                if self.stopping:
                    raise  # the executor gives the job back to the queue
                # Cancelled elsewhere, or this run lost its claim: what the store says decides.
        held = await store.get_job(job_id)
        if held is None or held.finished:
            return None  # a copy of a message whose job is done (or was cancelled while queued)
        if held.status == "queued":
            return 0.0  # given back to the queue (a lost claim): run it again
        return max(0.5, (held.lease_until or 0.0) - time.time() + 0.5)  # another run holds it

    def stop(self) -> None:
        self.stopping = True
        try:
            if self._metrics_server is not None:
                self._call(self._metrics_server.cleanup(), SHUTDOWN_S)
            self._call(self.gateway.shutdown(), SHUTDOWN_S)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def _call(self, work: Coroutine[Any, Any, T], timeout: float | None) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # what the gateway serves on (uvicorn[standard])
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def worker_app(broker_url: str, core: WorkerCore) -> Celery:
    """The Celery app of a worker process, with the task that runs jobs on ``core``."""
    from celery.exceptions import Reject

    app = celery_app(broker_url, core.gateway.config.jobs)

    @app.task(name=TASK, bind=True, max_retries=STORE_RETRIES, autoretry_for=(Exception,),
              dont_autoretry_for=(Reject,), retry_backoff=1, retry_backoff_max=60, retry_jitter=True)
    def run_job(task: Task, job_id: str) -> None:  # type: ignore[type-arg]
        try:
            wait = core.run(job_id)
        except concurrent.futures.CancelledError:  # the core stopped under the task: the worker is going down
            raise Reject("the worker is stopping; the job goes back to the queue", requeue=True) from None
        if wait is not None:
            raise task.retry(countdown=wait, max_retries=None)

    return app


def main(argv: list[str]) -> int:
    """``tokenway worker [--config FILE] [--concurrency N] [--queues Q,Q] [--loglevel LEVEL]``."""
    parser = argparse.ArgumentParser(
        prog="tokenway worker", argument_default=argparse.SUPPRESS,
        description="Run jobs (async jobs, batch lines) queued by gateways with TOKENWAY_JOBS_BROKER_URL set: a "
                    "Celery worker with the gateway's core. Same config and TOKENWAY_* env vars as serve; the job "
                    "store is TOKENWAY_DATABASE_URL, batch files TOKENWAY_FILES_DIR (shared with the gateways). "
                    "SIGTERM: the jobs running finish, then it exits.")
    parser.add_argument("--config", type=Path, help="YAML config [TOKENWAY_CONFIG]; the gateways' own")
    parser.add_argument("--concurrency", type=int, help="jobs run at once by this process (default: jobs.workers)")
    parser.add_argument("--queues", help="comma-separated queues to consume (default: all, <jobs.celery_prefix>.jobs "
                                         "and <jobs.celery_prefix>.batch.0 to .7)")
    parser.add_argument("--loglevel", dest="log_level", choices=["debug", "info", "warning", "error"],
                        help="[TOKENWAY_LOG_LEVEL] (default info)")
    parser.add_argument("--metrics-port", type=int,
                        help="serve /metrics and /health on this port, on TOKENWAY_HOST (default: not served)")
    args = vars(parser.parse_args(argv))
    try:
        settings = load_settings(**{k: v for k, v in args.items() if k in Settings.model_fields})
        config = load_config(settings.config)
    except SettingsError as exc:
        print(f"tokenway worker: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if not (settings.jobs_broker_url or settings.redis_url):
        print("tokenway worker: no broker. Set TOKENWAY_JOBS_BROKER_URL (redis://... or amqp://...), the same as "
              "the gateways', or TOKENWAY_REDIS_URL to use that Redis.", file=sys.stderr)
        return 2
    queues = [q.strip() for q in args["queues"].split(",") if q.strip()] if "queues" in args else None
    return run_worker(settings, config, args.get("concurrency"), queues, args.get("metrics_port"))


def run_worker(settings: Settings, config: GatewayConfig, concurrency: int | None = None,
               queues: list[str] | None = None, metrics_port: int | None = None) -> int:
    """Run a Celery worker in this process until SIGTERM (warm shutdown) or SIGQUIT; its exit code."""
    broker_url = settings.jobs_broker_url or settings.redis_url
    assert broker_url, "main() checks that a broker is set"
    # The core only queues what it submits (a job given back to the queue): it runs no workers of its own.
    core = WorkerCore(settings.model_copy(update={"jobs_broker_url": broker_url}), config, metrics_port)
    logging.captureWarnings(True)  # Celery's warnings (running as root) become lines of the JSON log
    if settings.log_level != "debug":
        # A job's request has its line already; Celery's "received" and "succeeded" lines for every
        # task would triple the log (and cost a third of the worker's CPU per line). Failures still show.
        for name in TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    core.start()
    try:
        app = worker_app(broker_url, core)
        threads = concurrency or config.jobs.workers
        consumed = queues or queue_names(config.jobs)
        worker = app.Worker(
            pool_cls="threads", concurrency=threads, queues=consumed, loglevel=settings.log_level.upper(),
            hostname=f"tokenway-{os.getpid()}@{socket.gethostname()}", quiet=True,  # no banner: the log is JSON
            without_mingle=True, without_gossip=True,  # no revokes or events to share between workers
        )
        core.gateway.log.event("worker_started", pid=os.getpid(), queues=consumed, concurrency=threads,
                               broker=_redacted(broker_url))
        worker.start()
        return int(worker.exitcode or 0)
    finally:
        core.stop()


def _redacted(url: str) -> str:
    """The broker URL without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}" if user else f"{scheme}{sep}***@{host}"
