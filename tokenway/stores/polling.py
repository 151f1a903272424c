"""A table served from an in-process copy, brought up to date by polling: the loop both the key cache
and the prompt book run."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from tokenway.observability.logging import JsonLog


class Poller:
    """Calls ``refresh()`` every ``every_s`` seconds. When it fails, the copy keeps serving; the log says
    so once (``<name>_refresh_failed``, with ``note``) and again when it recovers."""

    def __init__(self, refresh: Callable[[], Awaitable[None]], every_s: float, log: JsonLog, name: str,
                 note: str) -> None:
        self._refresh = refresh
        self._every_s = every_s
        self._log = log
        self._name = name
        self._note = note
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _poll(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._every_s)
            try:
                await self._refresh()
            except Exception as exc:
                if not failing:
                    self._log.event(f"{self._name}_refresh_failed", level="error", error=repr(exc), note=self._note)
                failing = True
                continue
            if failing:
                self._log.event(f"{self._name}_refresh_recovered")
                failing = False
