"""Single-flight: identical calls in flight at the same time share one backend call.

The first caller starts a *flight*: a task that makes the backend call and records what comes
back (a ``Completion``, or every block of a ``Stream``). Every caller, the first included,
is a subscriber that reads from that record, so a slow or departed client never stalls or
cancels the others; a subscriber that joins mid-stream replays the blocks so far, then
follows live. When the last subscriber leaves before the end, the backend call is cancelled,
as it would have been without coalescing. Coalescing is per process; across replicas the
shared cache catches the repeats once the first answer is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from tokenway.protocol import Usage, ends_stream
from tokenway.providers.base import Answer, Completion, Stream

# Called once the flight finished cleanly: (the answer, the stream blocks if it streamed).
OnComplete = Callable[[Answer, list[bytes]], Awaitable[None]]


class Flight:
    __slots__ = ("_changed", "_task", "answer", "blocks", "done", "error", "key", "started", "subscribers", "usage")

    def __init__(self, key: str) -> None:
        self.key = key
        self.answer: Answer | None = None
        self.blocks: list[bytes] = []
        self.error: BaseException | None = None
        self.started = False  # the backend answered (a Completion, or a Stream's head)
        self.done = False
        self.usage: Usage | None = None
        self.subscribers = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def answered(self) -> bool:
        """The whole answer is here (its [DONE] arrived); only the backend's end of stream is pending."""
        return bool(self.blocks) and ends_stream(self.blocks[-1])

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _wait(self) -> None:
        await self._changed.wait()


class Coalescer:
    """The flights in progress in this process, by key."""

    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def join(self, key: str) -> Flight | None:
        """The flight in progress for ``key``, if one can still be joined."""
        flight = self._flights.get(key)
        if flight is None or flight.error is not None:
            return None
        return flight

    def start(
        self, key: str, call: Callable[[], Awaitable[Answer]], on_complete: OnComplete, shared: bool = True
    ) -> Flight:
        """Start the backend call for ``key``; ``shared=False`` keeps it out of reach of others."""
        flight = Flight(key)
        if shared:
            self._flights[key] = flight
        flight._task = asyncio.get_running_loop().create_task(self._fly(flight, call, on_complete, shared))
        return flight

    async def _fly(
        self, flight: Flight, call: Callable[[], Awaitable[Answer]], on_complete: OnComplete, shared: bool
    ) -> None:
        stream: Stream | None = None
        try:
            answer = await call()
            flight.answer = answer
            flight.started = True
            if isinstance(answer, Stream):
                stream = answer
                flight._notify()
                async for block in stream:
                    flight.blocks.append(block)
                    # Usage arrives before [DONE], and the writer stops reading at [DONE].
                    flight.usage = stream.usage
                    flight._notify()
                flight.usage = stream.usage
            else:
                flight.usage = answer.usage
            flight.done = True
            flight._notify()
        except BaseException as exc:
            flight.error = exc
            flight.done = True
            flight._notify()
            if not isinstance(exc, Exception):
                raise
        else:
            # Storing is best effort and already answered for: a failure here is only a miss later.
            with contextlib.suppress(Exception):
                await on_complete(answer, flight.blocks)
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.aclose()
            if shared and self._flights.get(flight.key) is flight:
                del self._flights[flight.key]

    async def subscribe(self, flight: Flight, leader: bool) -> Answer:
        """This caller's answer from ``flight``: the leader pays for it, followers get it free."""
        flight.subscribers += 1
        try:
            while not flight.started and not flight.done:
                await flight._wait()
        except BaseException:
            self._leave(flight)
            raise
        if flight.error is not None and not flight.started:
            self._leave(flight)
            raise flight.error
        answer = flight.answer
        if isinstance(answer, Completion):
            self._leave(flight)
            return answer if leader else Completion(body=answer.body, usage=Usage(), headers=answer.headers)
        stream = Stream(lambda s: self._follow(flight, s, leader))
        stream.on_close(lambda _: self._leave(flight))
        return stream

    async def _follow(self, flight: Flight, stream: Stream, leader: bool) -> AsyncIterator[bytes]:
        if not leader:
            # Free from its first block: a follower cut short must not be billed for what it was sent.
            stream.usage = Usage()
        sent = 0
        while True:
            if sent < len(flight.blocks):
                # Catch up in one write: a late subscriber gets everything so far at once.
                upto = len(flight.blocks)
                block = flight.blocks[sent] if upto == sent + 1 else b"".join(flight.blocks[sent:upto])
                sent = upto
                if leader:
                    stream.usage = flight.usage
                yield block
                continue
            if flight.done:
                stream.usage = flight.usage if leader else Usage()
                if flight.error is not None:
                    raise flight.error
                return
            await flight._wait()

    def _leave(self, flight: Flight) -> None:
        flight.subscribers -= 1
        if flight.subscribers <= 0 and not flight.done and not flight.answered and flight._task is not None:
            # Nobody is listening any more: stop the backend call, as a hang-up would without us.
            # A flight that has its whole answer is left to finish, so that it is stored.
            flight._task.cancel()
            if self._flights.get(flight.key) is flight:
                del self._flights[flight.key]

    async def aclose(self) -> None:
        tasks: list[Any] = [f._task for f in self._flights.values() if f._task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._flights.clear()
