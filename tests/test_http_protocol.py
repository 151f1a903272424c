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


async def test_a_head_leaves_with_its_body_and_a_lone_head_on_the_next_turn() -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert inner.writes == []  # held for the body
    transport.write(b"{}")
    assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"]  # one send, at once
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")  # a stream's head, its first chunk not here yet
    await asyncio.sleep(0)
    assert inner.writes[1:] == [b"HTTP/1.1 200 OK\r\n\r\n"]  # sent on the next turn
    transport.write(b"data: 1\n\n")
    transport.write(b"data: 2\n\n")
    assert inner.writes[2:] == [b"data: 1\n\n", b"data: 2\n\n"]  # chunks are never held
    transport.write(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
    transport.close()  # closing sends what is still held before the FIN
    assert inner.writes[-1].startswith(b"HTTP/1.1 500") and inner.closed
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the real transport's
