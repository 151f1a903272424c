"""Time for the parts of the request path that keep it: monotonic seconds and an async sleep.

The circuit breaker, retry backoff and budget, Retry-After cooldowns and the admission queue
take a ``Clock`` in their constructor, the real one by default. Tests hand them a fake clock
that they move forward at once, instead of sleeping through backoffs and cooldowns.
"""

from __future__ import annotations

import asyncio
import time


class Clock:
    """The real clock: ``time.monotonic()`` and ``asyncio.sleep()``."""

    def now(self) -> float:
        """Seconds on a clock that never goes back; only differences between readings mean anything."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = Clock()
