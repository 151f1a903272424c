"""The usage ledger: one record per request, off the hot path, not lost on a crash.

``record()`` appends one JSON line to this process's write-ahead file and queues the record.
The lines of one turn of the event loop go out in one ``write`` syscall at the end of that turn
(into the page cache: they survive the process dying), so a busy process makes one syscall per
many requests; a crash can lose only the records of the turn it interrupts. A background task
writes the queue to the database in batches, then deletes the write-ahead file that held
them. At start, write-ahead files left by dead processes (whose ``flock`` is gone) are
replayed; inserts are idempotent on the record id, so a batch written twice counts once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
from pathlib import Path

import orjson

from tokenway.observability.logging import JsonLog
from tokenway.stores.base import Database, UsageRecord


class _WalFile:
    """One write-ahead file, locked for as long as this process owns it."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / f"usage-{os.getpid()}-{secrets.token_hex(4)}.wal"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lines: list[bytes] = []
        self.closed = False

    def append(self, record: UsageRecord) -> None:
        if not self._lines:
            asyncio.get_running_loop().call_soon(self.write)
        self._lines.append(orjson.dumps(record))

    def write(self) -> None:
        if self._lines and not self.closed:
            os.write(self.fd, b"\n".join(self._lines) + b"\n")
        self._lines.clear()

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.write()
            self.closed = True
            os.close(self.fd)


class Ledger:
    def __init__(
        self, db: Database, directory: Path, log: JsonLog, flush_s: float = 0.5, batch_size: int = 500
    ) -> None:
        self._db = db
        self._dir = directory
        self._log = log
        self._flush_s = flush_s
        self._batch_size = batch_size
        self._queue: list[UsageRecord] = []
        self._wal: _WalFile | None = None
        # Batches whose database write failed, each with the write-ahead file that still holds it.
        self._pending: list[tuple[list[UsageRecord], _WalFile]] = []
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        await self._replay()
        self._wal = _WalFile(self._dir)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def record(self, record: UsageRecord) -> None:
        assert self._wal is not None, "Ledger.start() was not awaited"
        self._wal.append(record)
        self._queue.append(record)
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    async def flush(self) -> None:
        """Write everything queued so far to the database (also called at shutdown)."""
        # One flush at a time: the periodic writer and an on-demand flush (``/admin/usage``) would
        # otherwise both write the oldest pending batch, and both try to retire it.
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        if self._queue:
            assert self._wal is not None
            batch, wal = self._queue, self._wal
            wal.write()  # the batch's lines still waiting for the end of this turn go to its own file
            self._queue, self._wal = [], _WalFile(self._dir)
            self._pending.append((batch, wal))
        while self._pending:
            batch, wal = self._pending[0]
            try:
                await self._db.insert_usage(batch)
            except Exception as exc:  # the database is down: keep the file, retry on the next tick
                self._log.event("usage_write_failed", level="error", records=len(batch), error=repr(exc),
                                wal=str(wal.path))
                return
            self._pending.pop(0)
            wal.discard()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_s)
            self._wake.clear()
            await self.flush()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
        if self._pending:
            self._log.event("usage_not_written", level="error", records=sum(len(b) for b, _ in self._pending),
                            note="kept in write-ahead files; replayed at the next start")
        for _, wal in self._pending:
            wal.close()
        if self._wal is not None:  # flush() moved everything queued out of it: it is empty
            self._wal.discard()
            self._wal = None

    async def _replay(self) -> None:
        for path in sorted(self._dir.glob("usage-*.wal")):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process owns it
                records = _read_wal(path)
                for start in range(0, len(records), self._batch_size):
                    await self._db.insert_usage(records[start:start + self._batch_size])
                path.unlink(missing_ok=True)
                if records:
                    self._log.event("usage_replayed", records=len(records), wal=str(path))
            finally:
                os.close(fd)


def _read_wal(path: Path) -> list[UsageRecord]:
    records = []
    for line in path.read_bytes().splitlines():
        try:
            records.append(UsageRecord(**orjson.loads(line)))
        except (orjson.JSONDecodeError, TypeError):
            continue  # a line cut short by the crash: that request's record was never complete
    return records
