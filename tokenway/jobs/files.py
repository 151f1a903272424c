"""File contents for the Batch API: one file per id in a directory (the data dir, or a shared volume).

Writes go to a temporary name and are renamed into place, so a reader never sees half a file and a
crash leaves no file that the store points at half-written.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

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

    def writer(self, file_id: str) -> ResultWriter:
        """A file made here (a batch's output), written a line at a time, in place once committed."""
        self._dir.mkdir(parents=True, exist_ok=True)
        return ResultWriter(file_id, self._dir / f".{file_id}.part", self.path(file_id))

    def delete(self, file_id: str) -> None:
        self.path(file_id).unlink(missing_ok=True)


class ResultWriter:
    def __init__(self, file_id: str, temporary: Path, final: Path) -> None:
        self.file_id = file_id
        self.lines = 0
        self._temporary, self._final = temporary, final
        self._out: BinaryIO | None = None

    def write(self, line: bytes) -> None:
        if self._out is None:
            self._out = self._temporary.open("wb")
        self._out.write(line)
        self.lines += 1

    async def commit(self) -> int:
        """Flush to disk and move into place; the file's size."""
        out = self._out
        assert out is not None, "nothing was written"

        def finish() -> int:
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
            out.close()
            self._temporary.rename(self._final)
            return size

        self._out = None
        return await asyncio.to_thread(finish)

    def discard(self) -> None:
        """Drop what was not committed (also after a commit: then nothing is left)."""
        if self._out is not None:
            self._out.close()
            self._out = None
        self._temporary.unlink(missing_ok=True)
