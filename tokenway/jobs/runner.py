"""Run one claimed job: its request goes through the gateway's policy list, like a live one.

The runner is the job's client. It runs as the key that submitted the job, below live traffic in
the admission queue, and it waits and tries again where a patient client would: a rate limit
paces it (the wait the 429 names), a busy gateway (503) holds it back, and a failure that may pass
(a 5xx, a timeout) is tried again up to ``jobs.max_attempts``. Whatever ends it — an answer, an
error, a spent budget — is recorded once, under the claim the job was run with.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson

from tokenway.api.openai import end_request
from tokenway.clock import Clock
from tokenway.context import JobRef, RequestContext
from tokenway.errors import BudgetExceeded, GatewayError, InternalError, Overloaded, RateLimited
from tokenway.ids import IdGenerator
from tokenway.jobs.options import JobsConfig
from tokenway.jobs.records import Job
from tokenway.observability.logging import JsonLog
from tokenway.observability.metrics import Metrics
from tokenway.policies.base import Handler
from tokenway.providers.base import Call, Completion

PACE_FLOOR_S = 0.05  # the shortest wait after a 429 or 503, so a job never spins


class JobRunner:
    def __init__(
        self, handle: Handler, config: JobsConfig, log: JsonLog, metrics: Metrics | None, clock: Clock,
        is_ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self._handle = handle
        self._config = config
        self._log = log
        self._metrics = metrics
        self._clock = clock
        self._is_ready = is_ready
        self._new_request_id = IdGenerator("req_")

    async def run(self, job: Job) -> Job:
        """Send the job's request until it has an outcome; returns the job with its result set (not yet
        recorded: the caller records it under the job's claim)."""
        body = orjson.loads(job.body)
        ref = JobRef(job.id, job.owner, job.batch_id)
        tries = 1  # the claim counted the first
        while True:
            if not self._is_ready():  # starting up or draining: the job waits, it does not fail
                await self._clock.sleep(1.0)
                continue
            outcome = await self._attempt(job, Call(job.kind, dict(body)), ref)  # type: ignore[arg-type]
            if isinstance(outcome, float):  # told to wait (a rate limit, a busy gateway): the same try again
                await self._clock.sleep(outcome)
                continue
            if outcome is not None and outcome.retryable and tries < self._config.max_attempts:
                await self._clock.sleep(self._config.retry_backoff_s * 2 ** (tries - 1))
                tries += 1
                job.attempts += 1
                continue
            job.finished_at = time.time()
            if outcome is not None:
                job.status, job.status_code, job.result = "failed", outcome.status, outcome.envelope()
            return job

    async def _attempt(self, job: Job, call: Call, ref: JobRef) -> GatewayError | float | None:
        """One pass through the policy list: None (the job has its result), a wait in seconds, or the error."""
        ctx = RequestContext(request_id=self._new_request_id(), endpoint=job.kind, priority=self._config.priority,
                             job=ref)
        job.request_id = ctx.request_id
        if self._metrics is not None:
            self._metrics.request_started(job.kind)
        try:
            answer = await self._handle(ctx, call)
            if not isinstance(answer, Completion):  # submit refuses streams; a policy must not make one
                await answer.aclose()
                raise InternalError("The job's request was answered with a stream.")
            ctx.usage = answer.usage
            job.status, job.status_code, job.result = "succeeded", 200, answer.body
            return None
        except asyncio.CancelledError:
            ctx.status, ctx.error_type = 499, "JobCancelled"
            raise
        except BudgetExceeded as error:
            ctx.status, ctx.error_type = error.status, type(error).__name__
            return error
        except (RateLimited, Overloaded) as error:
            ctx.status, ctx.error_type = error.status, type(error).__name__
            if error.code == "tokens_exceeded":  # the request is larger than the limit: waiting never helps
                return error
            return max(PACE_FLOOR_S, error.retry_after or 1.0)
        except GatewayError as error:
            ctx.status, ctx.error_type = error.status, type(error).__name__
            return error
        except Exception as exc:  # a bug: the job fails with the same envelope a live client would get
            ctx.status, ctx.error_type, ctx.exception = 500, type(exc).__name__, exc
            return InternalError(f"Internal error; request id {ctx.request_id}.")
        finally:
            await end_request(ctx, self._metrics, self._log)
