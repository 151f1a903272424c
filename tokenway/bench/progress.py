"""Live progress: rich or tqdm when installed, otherwise a plain line every couple of seconds.

Updates run on the benchmark's event loop, so they are throttled: a redraw per request would
itself add event-loop lag at high request rates.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tokenway.bench.records import RequestRecord

REDRAW_S = 0.25
PLAIN_EVERY_S = 2.0


class Progress:
    """Counts finished requests and shows them; `kind` is "rich", "tqdm", "plain" or "off"."""

    def __init__(self, label: str, total: int | None, *, kind: str = "auto", out: TextIO | None = None) -> None:
        self.label, self.total = label, total
        self.out = out or sys.stderr
        self.done = self.failed = 0
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._bar: Any = None
        self.kind = self._pick(kind)
        self._open()

    def _pick(self, kind: str) -> str:
        if kind != "auto":
            return kind
        if not self.out.isatty():
            return "plain"
        for name in ("rich", "tqdm"):
            try:
                __import__(name)
                return name
            except ImportError:
                continue
        return "plain"

    def _open(self) -> None:
        if self.kind == "rich":
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total)
        elif self.kind == "tqdm":
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=self.label, unit="req", file=self.out)

    def _text(self) -> str:
        el = time.perf_counter() - self.t0
        total = f"/{self.total}" if self.total else ""
        return (
            f"{self.label}: {self.done}{total} done, {self.failed} failed, "
            f"{self.done / el if el > 0 else 0:.1f} req/s, {el:.0f}s"
        )

    def update(self, rec: RequestRecord) -> None:
        """Called once per finished request."""
        self.done += 1
        self.failed += rec.error is not None
        now = time.perf_counter()
        if self.kind == "plain":
            if now - self._last >= PLAIN_EVERY_S:
                self._last = now
                self.out.write(self._text() + "\n")
                self.out.flush()
        elif self._bar is not None and now - self._last >= REDRAW_S:
            self._last = now
            self._redraw()

    def _redraw(self) -> None:
        if self.kind == "rich":
            self._bar.update(self._task, completed=self.done, description=self._text())
        elif self.kind == "tqdm":
            self._bar.n = self.done
            self._bar.set_postfix_str(f"failed={self.failed}", refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._redraw()
            if self.kind == "rich":
                self._bar.stop()
            else:
                self._bar.close()
        elif self.kind == "plain":
            self.out.write(self._text() + "\n")
