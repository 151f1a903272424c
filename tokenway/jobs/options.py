"""The ``jobs`` section of the YAML config.

```yaml
jobs:
  workers: 16                  # jobs run at once by each gateway process (embedded) or worker process
  priority: -5                 # in the admission queue: below live traffic (0) by default
  max_queued: 1000000          # queued jobs in total, and per key: past either, submits get 429
  max_queued_per_key: 200000
  max_file_bytes: 209715200    # a batch input file (413 past it)
  webhooks: {allowed_hosts: [hooks.example.com], secret_env: TOKENWAY_WEBHOOK_SECRET}
  celery_prefix: tokenway      # a fleet: queue names (and Redis key prefix) of `tokenway worker`
  celery_visibility_timeout_s: 300
```
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WebhookConfig(_Strict):
    allowed_hosts: list[str] = []  # exact host names a job's webhook_url may point at; empty: webhooks refused
    secret_env: str = "TOKENWAY_WEBHOOK_SECRET"  # the env var holding the HMAC-SHA256 signing secret
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 6
    first_backoff_s: Annotated[float, Field(gt=0)] = 1.0  # doubled after each failed delivery
    timeout_s: Annotated[float, Field(gt=0)] = 10.0


class JobsConfig(_Strict):
    workers: Annotated[int, Field(ge=1, le=4096)] = 16
    priority: Annotated[int, Field(ge=-10, le=10)] = -5
    max_queued: Annotated[int, Field(ge=1)] = 1_000_000
    max_queued_per_key: Annotated[int, Field(ge=1)] = 200_000
    max_file_bytes: Annotated[int, Field(ge=1024)] = 200 * 1024 * 1024
    max_batch_lines: Annotated[int, Field(ge=1)] = 50_000
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 3  # tries of a job whose failure may pass (5xx, timeouts)
    retry_backoff_s: Annotated[float, Field(gt=0)] = 1.0
    # A running job's claim lasts this long without renewal; a worker killed mid-job leaves it to
    # expire, and the job runs again. Renewed every third of it while the job runs.
    lease_s: Annotated[float, Field(ge=1)] = 30.0
    cancel_poll_s: Annotated[float, Field(gt=0, le=5)] = 0.5  # how soon a worker sees a cancel from elsewhere
    keep_days: Annotated[float, Field(gt=0)] = 30.0  # finished jobs, ended batches and files are deleted after this
    webhooks: WebhookConfig = WebhookConfig()
    # A fleet (`tokenway worker`, Celery): the queues are <prefix>.jobs and <prefix>.batch.0 to .7, and
    # on a Redis broker every key starts with "<prefix>:", so two installations can share one broker.
    celery_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = "tokenway"
    # Redis broker: a job's message taken by a worker that died unacknowledged goes back to the queue
    # after this long (RabbitMQ does it when the connection drops). A job still running past it is
    # delivered once more; the claim turns that copy away, so it costs a message, not a call.
    # Default: 300 s, or twice lease_s if that is longer.
    celery_visibility_timeout_s: Annotated[float, Field(ge=1)] | None = None

    @property
    def visibility_timeout_s(self) -> float:
        return self.celery_visibility_timeout_s or max(300.0, 2 * self.lease_s)

    @model_validator(mode="after")
    def _redelivery_after_the_lease(self) -> JobsConfig:
        if self.celery_visibility_timeout_s is not None and self.celery_visibility_timeout_s <= self.lease_s:
            raise ValueError(
                f"celery_visibility_timeout_s ({self.celery_visibility_timeout_s:g}) must be longer than lease_s "
                f"({self.lease_s:g}): a job delivered again can only be claimed once the dead worker's lease ran out")
        return self
