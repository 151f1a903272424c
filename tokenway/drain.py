"""Graceful drain on SIGTERM (or ``POST /admin/drain``): refuse new work first, then let uvicorn close and wait.

uvicorn stops on SIGTERM by closing its listeners and waiting up to
``timeout_graceful_shutdown`` for open requests and streams. A load balancer would still be
sending traffic at that moment, so the app puts itself in front of that handler: the first
SIGTERM makes ``/ready`` answer 503 and the data plane refuse new calls (503 + Retry-After)
at once, and hands the signal on to uvicorn ``delay`` seconds later, leaving the balancer time
to notice. In-flight work keeps running throughout. A second SIGTERM stops without the delay.

Installed from the lifespan, so it runs in every worker process (``--workers N``), inside
uvicorn's own signal capture; off the main thread (tests) there is nothing to install.

``POST /admin/drain`` starts the same drain without the signal (a cloud's interruption notice, a
preStop hook): the process serves what it has until its SIGTERM comes, which then stops it at once.
With several workers the call reaches one of them; the drain file carries it to the others.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType


def install_drain_on_sigterm(begin_drain: Callable[[], bool], delay: float) -> None:
    """On SIGTERM call ``begin_drain()`` (True the first time), then pass the signal on."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return  # no server handler to hand over to: leave the default behaviour alone
    loop = asyncio.get_running_loop()

    def on_sigterm(sig: int, frame: FrameType | None) -> None:
        if not begin_drain():
            previous(sig, frame)
            return
        loop.call_soon_threadsafe(loop.call_later, delay, previous, sig, None)

    signal.signal(signal.SIGTERM, on_sigterm)


async def drain_when_file_appears(path: Path, begin_drain: Callable[[], bool], interval: float = 0.25) -> None:
    """Call ``begin_drain()`` once ``path`` exists, then return.

    ``serve --workers N`` gives its workers one such file: ``POST /admin/drain`` reaches one worker,
    which creates the file, and the others see it here within ``interval``. Any process on the box
    may create it as well (a spot-notice watcher sharing the volume). A stat every quarter second is
    the whole cost.
    """
    # Another process makes the file: there is no event to wait on, and a stat is cheap.
    while not path.exists():  # noqa: ASYNC240, ASYNC110
        await asyncio.sleep(interval)
    begin_drain()
