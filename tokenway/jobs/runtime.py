"""The jobs capability assembled for one process: store, files, service, and who runs the jobs.

In the gateway: the API's service, plus workers inside the process (the default) or a Celery
client that only queues (``TOKENWAY_JOBS_BROKER_URL`` set). In ``tokenway worker``: the same
service and executor, fed by Celery.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from tokenway.clock import Clock
from tokenway.config import GatewayConfig, Settings
from tokenway.jobs.files import FileContents
from tokenway.jobs.metrics import JobMetrics
from tokenway.jobs.runner import JobRunner
from tokenway.jobs.service import JobService
from tokenway.jobs.store import open_job_store
from tokenway.jobs.webhooks import Webhooks
from tokenway.jobs.workers import Executor, LocalWorkers
from tokenway.observability.logging import JsonLog
from tokenway.observability.metrics import Metrics
from tokenway.policies.base import Handler

SNAPSHOT_S = 5.0  # how often the queue's state is read for the metrics


class Jobs:
    def __init__(self, settings: Settings, config: GatewayConfig, log: JsonLog, metrics: Metrics | None) -> None:
        self._settings = settings
        self._config = config.jobs
        self._log = log
        store = open_job_store(settings.database_url, settings.data_dir)
        contents = FileContents(settings.files_dir or settings.data_dir / "files")
        self.service = JobService(store, contents, config.jobs, log,
                                  Webhooks(config.jobs.webhooks, log, store.set_webhook_state))
        self.metrics = JobMetrics(metrics) if metrics is not None else None
        if self.metrics is not None:
            self.service.on_finished.append(self.metrics.job_finished)
        self.executor: Executor | None = None
        self._workers: LocalWorkers | None = None
        self._housekeeping: asyncio.Task[None] | None = None

    async def start(self, handle: Handler, clock: Clock, is_ready: Callable[[], bool],
                    request_metrics: Metrics | None) -> None:
        """Open the store; then run jobs here, or only queue them for Celery's workers."""
        await self.service.store.start()
        runner = JobRunner(handle, self._config, self._log, request_metrics, clock, is_ready)
        # Celery's threads bound a worker's jobs; here, the executor's slots.
        slots = None if self._settings.jobs_broker_url else self._config.workers
        self.executor = Executor(self.service, runner, self._config, self._log, slots)
        self.executor.start()  # renews the claims of the jobs this process runs; stops those cancelled elsewhere
        if self._settings.jobs_broker_url:
            from tokenway.jobs.celery_dispatch import CeleryDispatch

            self.service.dispatch = CeleryDispatch(self._settings.jobs_broker_url, self.service, self._log)
        else:
            self._workers = LocalWorkers(self.service, self.executor, self._config, self._log)
            self.service.dispatch = self._workers
            self._workers.start()
        self._housekeeping = asyncio.get_running_loop().create_task(self._keep_house())

    async def _keep_house(self) -> None:
        """Every second: claims that ran out go back to the queue, batches past their window expire; and
        every few seconds the queue's state for the metrics."""
        ticks = 0
        while True:
            try:
                await self.service.maintain()
                if self.metrics is not None and ticks % int(SNAPSHOT_S) == 0:
                    self.metrics.snapshot = await self.service.counts()
            except Exception as exc:  # the store is down: say so, and try again next second
                self._log.event("jobs_store_failed", level="error", error=repr(exc))
            ticks += 1
            await asyncio.sleep(1.0)

    async def aclose(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        if self._workers is not None:
            await self._workers.aclose()  # no more claims
        if self.executor is not None:
            await self.executor.aclose()  # running jobs back to the queue
        await self.service.aclose()
        if self.service.dispatch is not None and hasattr(self.service.dispatch, "aclose"):
            await self.service.dispatch.aclose()
        await self.service.store.aclose()
