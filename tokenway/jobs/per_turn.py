"""``PerTurn``: the writes asked for in one turn of the event loop, made as one.

Submits and finished jobs each need a row written before anyone is told (a 202, a result): one
transaction each cost the store's thread (or a Postgres round trip) per job, and was most of what a
job cost over a live request. Writes asked for while the previous one is in flight wait for it and go
together in the next, so under load one transaction carries many rows; alone, a write goes at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class PerTurn(Generic[T, R]):
    def __init__(self, write: Callable[[list[T]], Awaitable[Sequence[R]]]) -> None:
        self._write = write  # one result per item, in order
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_all())
        return await asyncio.shield(future)  # a caller that gives up does not undo the others' write

    async def _write_all(self) -> None:
        try:
            while self._waiting:
                await asyncio.sleep(0)  # the rest of this turn's callers join in
                batch, self._waiting = self._waiting, []
                try:
                    results = await self._write([item for item, _ in batch])
                except Exception as exc:  # every caller of this batch gets the error
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._writer = None
