"""File contents for the Batch API: one file per id in a directory (the data dir, or a shared volume).

Writes go to a temporary name and are renamed into place, so a reader never sees half a file and a
crash leaves no file that the store points at half-written.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from tokenway.errors import PayloadTooLarge


class FileContents:
    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def path(self, file_id: str) -> Path:
        return self._dir / file_id

    async def write_upload(self, file_id: str, chunks: AsyncIterator[bytes], limit: int) -> int:
        """Write an upload as it arrives; 413 (and nothing kept) past ``limit`` bytes."""
        self._dir.mkdir(parents=True, exist_ok=True)
        temporary = self._dir / f".{file_id}.part"
        size = 0
        try:
            with temporary.open("wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(f"The file is larger than this gateway's limit of {limit} bytes "
                                              "(jobs.max_file_bytes).", param="file")
                    out.write(chunk)
            temporary.rename(self.path(file_id))
        finally:
            temporary.unlink(missing_ok=True)
        return size

    async def write_lines(self, file_id: str, lines: Iterable[bytes]) -> int:
        """Write a file made here (a batch's output), off the event loop."""

        def write() -> int:
            self._dir.mkdir(parents=True, exist_ok=True)
            temporary = self._dir / f".{file_id}.part"
            size = 0
            with temporary.open("wb") as out:
                for line in lines:
                    out.write(line)
                    size += len(line)
                out.flush()
                os.fsync(out.fileno())
            temporary.rename(self.path(file_id))
            return size

        return await asyncio.to_thread(write)

    async def read(self, file_id: str) -> bytes:
        return await asyncio.to_thread(self.path(file_id).read_bytes)

    def delete(self, file_id: str) -> None:
        self.path(file_id).unlink(missing_ok=True)
