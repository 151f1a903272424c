"""Admission: per-deployment concurrency, and a bounded priority queue for when all are busy.

``LimitConcurrency`` (a policy, after routing) holds a slot of the chosen deployment for the
whole call, stream included. ``AdmissionQueue`` (one per model, used by routing) is where a
call waits when every routable deployment is at ``max_concurrency``: highest priority first,
then first come; a freed slot is handed to the head waiter so newcomers cannot barge past it.
The queue sheds with 503 + Retry-After when it is full, when the wait would outlast the
request's deadline, or when the wait times out. A full queue makes room for a call that outranks
its lowest waiter, shedding that one: jobs (below live traffic) never keep live calls out.
"""

from __future__ import annotations

import asyncio
import heapq

from tokenway.clock import SYSTEM_CLOCK, Clock
from tokenway.context import RequestContext
from tokenway.deployments import Deployment
from tokenway.errors import Overloaded
from tokenway.policies.base import Handler
from tokenway.providers.base import Answer, Call, Stream
from tokenway.routing.options import QueueConfig


class Shed(Overloaded):
    """The gateway itself has no room: not retried on the same model (fallbacks still apply)."""

    code = "overloaded"

    @property
    def retryable(self) -> bool:
        return False


class AdmissionQueue:
    __slots__ = ("_clock", "_config", "_heap", "_seq", "handed", "service_ewma", "slots")

    def __init__(self, config: QueueConfig, slots: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self._config = config
        self._clock = clock
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = 0
        self.handed = 0  # waiters woken for a freed slot that have not taken it yet
        self.service_ewma = 1.0  # seconds a call holds a slot; sizes the wait estimate
        self.slots = max(1, slots)

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def config(self) -> QueueConfig:
        return self._config

    @property
    def enabled(self) -> bool:
        return self._config.size > 0

    def busy(self) -> bool:
        """Someone is ahead: a newcomer must queue even if a slot looks free."""
        return bool(self._heap) or self.handed > 0

    async def wait(self, priority: int, remaining: float | None) -> None:
        """Wait for a freed slot; raise ``Shed`` if that cannot happen in time."""
        config = self._config
        if not self.enabled:
            raise Shed("Every deployment of this model is at its concurrency limit; retry shortly.", retry_after=1)
        if len(self._heap) >= config.size and not self._displace(priority):
            raise Shed(f"The queue for this model is full ({config.size} waiting); retry shortly.",
                       retry_after=self._estimate(len(self._heap)))
        limit = config.max_wait if remaining is None else min(config.max_wait, remaining)
        estimate = self._estimate(self._ahead(priority))
        if estimate > limit:
            raise Shed(f"The queue wait (about {estimate:.1f}s) would outlast the request's deadline.",
                       retry_after=estimate)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._heap, (-priority, self._seq, future))
        timer = asyncio.ensure_future(self._clock.sleep(limit))
        try:
            await asyncio.wait((future, timer), return_when=asyncio.FIRST_COMPLETED)
            if not future.done():
                raise Shed(f"No capacity freed up within {limit:.3g}s of queueing; retry shortly.",
                           retry_after=self._estimate(len(self._heap)))
            future.result()  # raises the Shed of a waiter displaced by a higher-priority call
        except BaseException:
            if future.done() and not future.cancelled() and future.exception() is None:
                self._pass_on()  # woken and cancelled at once: the slot goes to the next waiter
            raise
        finally:
            timer.cancel()
            if not future.done():
                future.cancel()  # left in the heap; wake() skips cancelled entries

    def taken(self) -> None:
        """A woken waiter got (or gave up) its slot."""
        if self.handed > 0:
            self.handed -= 1

    def released(self, held: float) -> None:
        """A slot was freed after being held ``held`` seconds: hand it to the best waiter, if any."""
        self.service_ewma += 0.2 * (held - self.service_ewma)
        self.wake()

    def wake(self) -> None:
        while self._heap:
            _, _, future = heapq.heappop(self._heap)
            if not future.done():
                self.handed += 1
                future.set_result(None)
                return

    def _pass_on(self) -> None:
        self.taken()
        self.wake()

    def _displace(self, priority: int) -> bool:
        """A full queue makes room for a call that outranks its lowest waiter (jobs, by default), which
        is shed to retry later: low-priority work never keeps interactive calls out."""
        waiting = [entry for entry in self._heap if not entry[2].done()]
        if len(waiting) < len(self._heap):  # drop the entries of waiters that already left
            self._heap = waiting
            heapq.heapify(self._heap)
            if len(self._heap) < self._config.size:
                return True
        lowest = max(self._heap, default=None)  # the lowest priority, and the latest among those
        if lowest is None or -lowest[0] >= priority:
            return False
        self._heap.remove(lowest)
        heapq.heapify(self._heap)
        lowest[2].set_exception(Shed("A higher-priority call took this place in the queue; retry shortly.",
                                     retry_after=self._estimate(len(self._heap))))
        return True

    def _ahead(self, priority: int) -> int:
        return sum(1 for p, _, f in self._heap if -p >= priority and not f.done())

    def _estimate(self, ahead: int) -> float:
        return (ahead + 1) * self.service_ewma / self.slots


class LimitConcurrency:
    """Hold a slot on the chosen deployment until the answer (or the stream) is finished."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock  # times how long a slot is held: the queue's wait estimate learns from it

    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        deployment = ctx.target
        assert deployment is not None, "routing sets the target before this policy"
        if deployment.full:
            raise Overloaded(
                f"The deployment {deployment.name} is at its limit of {deployment.config.max_concurrency} "
                "concurrent requests; retry shortly.",
                retry_after=1,
            )
        deployment.acquire()
        started = self._clock.now()
        try:
            answer = await next(ctx, call)
        except BaseException:
            self._release(deployment, started)
            raise
        if isinstance(answer, Stream):
            answer.on_close(lambda _: self._release(deployment, started))
        else:
            self._release(deployment, started)
        return answer

    def _release(self, deployment: Deployment, started: float) -> None:
        deployment.release(self._clock.now() - started)
