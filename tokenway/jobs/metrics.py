"""Job metrics: jobs finished by status, how long they took, batch lines done, and the queue's state.

The queue's state (jobs by status, the oldest queued job's age) is read from the store every few
seconds by the gateway and exported from that snapshot at scrape time, so a scrape never waits on
the database. In a fleet the store is shared, so any gateway shows the whole queue.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from tokenway.jobs.records import Job
from tokenway.jobs.service import JobCounts
from tokenway.observability.metrics import LATENCY_BUCKETS, Metrics

JOB_DURATION_BUCKETS = (*LATENCY_BUCKETS, 900, 1800, 3600, 4 * 3600, 24 * 3600)


class JobMetrics:
    def __init__(self, metrics: Metrics) -> None:
        registry = metrics.registry
        self.finished = Counter("tokenway_jobs_finished", "Jobs (async jobs and batch lines) that ended, by status.",
                                ["kind", "status"], registry=registry)
        self.duration = Histogram("tokenway_job_duration_seconds", "From submit to the job's end.",
                                  ["kind"], buckets=JOB_DURATION_BUCKETS, registry=registry)
        self.snapshot = JobCounts({}, None)
        metrics.add_collector(self)

    def job_finished(self, job: Job) -> None:
        kind = "batch_line" if job.batch_id else "async"
        self.finished.labels(kind, job.status).inc()
        if job.finished_at is not None:
            self.duration.labels(kind).observe(max(0.0, job.finished_at - job.created_at))

    def collect(self) -> Iterable[Metric]:
        jobs = GaugeMetricFamily("tokenway_jobs", "Jobs in the store, by status (read every few seconds).",
                                 labels=["status"])
        for status in ("queued", "running", "succeeded", "failed", "cancelled", "expired"):
            jobs.add_metric([status], self.snapshot.by_status.get(status, 0))
        yield jobs
        oldest = self.snapshot.oldest_queued_at
        yield GaugeMetricFamily("tokenway_jobs_oldest_queued_age_seconds",
                                "How long the oldest queued job has waited (0: none queued).",
                                value=0.0 if oldest is None else max(0.0, time.time() - oldest))
