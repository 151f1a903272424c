"""The recorder: chosen requests kept with their routing story, written off the request path.

Two policies, in the list only while ``record:`` names a model or a key:

- ``Recorder.front`` (right after access, which names the key): picks the request (its model or
  its key is opted in, then ``record.sample``), keeps the body as the client sent it, the answer
  (a stream's blocks as they pass, assembled at write time) and defers the write to the end;
- ``Recorder.attempts`` (last, next to the provider call): each call to a deployment, its
  outcome and time, which is the routing story (retries, fallbacks).

A request made with the master key whose request id starts with ``replay_`` (what ``tokenway
replay`` sends) is always recorded, so a replay can be set beside its original.

At the end of the request the context is queued; a background task turns the queue into rows
(redaction, assembling streams, JSON) and writes them in one transaction every
``record.flush_s``, enforcing the row cap and the retention in the same transaction. Records
are best-effort: a crash loses the queue (at most ``flush_s`` of them), and while the database is
down at most ``max_records`` wait; past that new ones are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import orjson

from tokenway.context import RequestContext
from tokenway.errors import GatewayError
from tokenway.observability.logging import JsonLog
from tokenway.policies.base import Handler
from tokenway.providers.base import Answer, Call, Completion
from tokenway.replay.options import RecordConfig
from tokenway.replay.recording import Attempt, Recording, captured, clean, document
from tokenway.replay.store import RecordStore, Row

REPLAY_PREFIX = "replay_"
_PRUNE_EVERY_S = 60.0


class Recorder:
    def __init__(self, config: RecordConfig, store: RecordStore, log: JsonLog) -> None:
        self._config = config
        self._models = set(config.models)
        self._keys = set(config.keys)
        self.store = store
        self._log = log
        self._queue: list[tuple[RequestContext, Recording, float]] = []
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()

    async def start(self) -> None:
        await self.store.start()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
        await self.store.aclose()

    def chosen(self, ctx: RequestContext, model: str) -> bool:
        if ctx.key is None and ctx.request_id.startswith(REPLAY_PREFIX):
            return True
        opted_in = model in self._models or "*" in self._models or (ctx.key is not None and ctx.key.id in self._keys)
        return opted_in and (self._config.sample >= 1.0 or random.random() < self._config.sample)

    async def front(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        model = call.body.get("model")
        if call.kind == "embeddings" or not isinstance(model, str) or not self.chosen(ctx, model):
            return await next(ctx, call)
        recording = ctx.recording = Recording(call.kind, model, clean(call.body, self._config.max_body_chars))
        ctx.defer(self._queued)
        answer = await next(ctx, call)
        if isinstance(answer, Completion):
            recording.answer = answer.body
            return answer
        return captured(answer, recording, 4 * self._config.max_body_chars)

    async def attempts(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        recording = ctx.recording
        if recording is None:
            return await next(ctx, call)
        started = time.perf_counter()
        attempt = Attempt(ctx.model, ctx.deployment, round((started - ctx.started) * 1000, 3))
        recording.attempts.append(attempt)
        try:
            return await next(ctx, call)
        except GatewayError as error:
            attempt.error, attempt.status = type(error).__name__, error.status
            raise
        finally:
            attempt.ms = round((time.perf_counter() - started) * 1000, 3)

    def _queued(self, ctx: RequestContext) -> None:
        if len(self._queue) >= self._config.max_records:
            self.dropped += 1
            return
        assert ctx.recording is not None
        self._queue.append((ctx, ctx.recording, time.perf_counter()))

    async def flush(self, prune: bool = False) -> None:
        """Write everything queued so far (also what ``GET /admin/requests/{id}`` does first); with ``prune``,
        enforce the retention even when there is nothing to write."""
        async with self._writing:
            if not self._queue and not prune:
                return
            batch, self._queue = self._queue, []
            rows: list[Row] = []
            for ctx, recording, finished in batch:
                doc = document(ctx, recording, self._config.max_body_chars, finished)
                rows.append((ctx.request_id, recording.wall_start, recording.requested_model, ctx.status,
                             orjson.dumps(doc, default=str).decode()))
            try:
                await self.store.write(rows, time.time() - self._config.retention_s, self._config.max_records)
            except Exception as exc:  # the database is down: put them back (bounded by _queued), retry later
                self._queue[:0] = batch[: max(0, self._config.max_records - len(self._queue))]
                self._log.event("records_write_failed", level="error", records=len(batch), error=repr(exc))

    async def _run(self) -> None:
        pruned = time.monotonic()
        while True:
            await asyncio.sleep(self._config.flush_s)
            idle_prune = time.monotonic() - pruned > _PRUNE_EVERY_S  # old records go even with no new ones
            if idle_prune or self._queue:
                pruned = time.monotonic()
            await self.flush(prune=idle_prune)
