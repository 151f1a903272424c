"""The server protocol sends what one event-loop turn wrote in one system call, and loses nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from tokenway.http_protocol import CoalescingTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


async def test_writes_of_one_turn_leave_together_and_close_flushes_first() -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"{}")
    assert inner.writes == []  # nothing sent during the turn that wrote
    await asyncio.sleep(0)
    assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
    transport.write(b"data: 1\n\n")
    await asyncio.sleep(0)
    transport.write(b"data: 2\n\n")  # a later turn: a separate send, as a stream's chunks should be
    transport.close()  # ... and closing sends what is still held before the FIN
    assert inner.writes[1:] == [b"data: 1\n\n", b"data: 2\n\n"] and inner.closed
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the real transport's
