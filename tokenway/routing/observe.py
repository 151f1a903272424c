"""Watching a stream for routing: its first block (TTFT, early failures) and how it ended.

A stream can still fail before its first block (the worker resets right after the headers, or
ends without a chunk). ``observe_stream`` waits up to ``probe`` seconds for that first block
inside the retry loop, so such a failure is raised here — before a byte has gone to the
client — and can be retried; a first block that takes longer is left to the stream writer,
which sends heartbeats meanwhile. The outcome goes to the deployment's breaker when the
stream closes: failed if it broke, succeeded if it ended normally.
"""

from __future__ import annotations

import asyncio
import time

from tokenway.context import RequestContext
from tokenway.deployments import Deployment
from tokenway.errors import GatewayError, UpstreamError
from tokenway.protocol import ends_stream
from tokenway.providers.base import Stream


class _Observed:
    """An async iterator over the inner stream that yields a prefetched first block first."""

    __slots__ = ("_deployment", "_first", "_inner", "_outer", "_pending", "_started", "_verdict")

    def __init__(self, inner: Stream, deployment: Deployment, started: float) -> None:
        self._inner, self._deployment, self._started = inner, deployment, started
        self._first: bytes | None = None
        self._pending: asyncio.Future[bytes] | None = None
        self._outer: Stream | None = None
        self._verdict: bool | None = None  # True: ended well, False: broke, None: cut short

    def bind(self, outer: Stream) -> _Observed:
        self._outer = outer
        return self

    def __aiter__(self) -> _Observed:
        return self

    @property
    def has_block(self) -> bool:
        return self._first is not None

    async def __anext__(self) -> bytes:
        try:
            if self._first is not None:
                block, self._first = self._first, None
            elif self._pending is not None:
                pending, self._pending = self._pending, None
                block = await pending
            else:
                block = await self._inner.__anext__()
            if self._started:
                self._arrived()
            if ends_stream(block):
                self._verdict = True  # the writer stops reading at [DONE]
            return block
        except StopAsyncIteration:
            self._verdict = True
            raise
        except GatewayError:
            self._verdict = False
            raise
        finally:
            if self._outer is not None:
                self._outer.usage = self._inner.usage

    def _arrived(self) -> None:
        if self._started:
            self._deployment.observe_ttft(time.perf_counter() - self._started)
            self._started = 0.0

    async def prefetch(self, wait: float) -> None:
        """Wait up to ``wait`` seconds for the first block; raise if the stream fails by then."""
        pending = asyncio.ensure_future(self._inner.__anext__())
        try:
            done, _ = await asyncio.wait((pending,), timeout=wait)
        except BaseException:
            pending.cancel()
            raise
        if not done:
            self._pending = pending
            return
        try:
            self._first = pending.result()
        except StopAsyncIteration:
            name = self._deployment.name
            raise UpstreamError(f"The backend {name} ended the stream before sending anything.") from None
        self._arrived()

    async def aclose(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            await asyncio.wait((self._pending,))
            self._pending = None
        try:
            await self._inner.aclose()
        finally:
            breaker = self._deployment.breaker
            if self._verdict is True:
                breaker.success()
            elif self._verdict is False:
                self._deployment.failures += 1
                breaker.failure()
            else:
                breaker.release_probe()


async def observe_stream(
    stream: Stream, deployment: Deployment, started: float, probe: float, ctx: RequestContext
) -> Stream:
    observed = _Observed(stream, deployment, started)
    remaining = ctx.remaining()
    wait = probe if remaining is None else min(probe, remaining)
    if wait > 0:
        try:
            await observed.prefetch(wait)
        except GatewayError:
            deployment.failures += 1
            deployment.breaker.failure()
            await stream.aclose()
            raise
        except BaseException:
            deployment.breaker.release_probe()
            await stream.aclose()
            raise
    return Stream(observed.bind)
