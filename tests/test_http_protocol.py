"""The server protocol sends a response's head with its body, and loses nothing on the way."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from tests.fakes import FakeUpstream
from tests.servers import running_gateway
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


def _post(body: bytes, *extra: bytes) -> bytes:
    head = [b"POST /v1/chat/completions HTTP/1.1", b"host: gateway", b"content-type: application/json",
            b"content-length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n"


def _read_until(sock: socket.socket, done: Callable[[bytes], bool]) -> bytes:
    data = b""
    while not done(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_pipelined_closing_and_expect_continue_requests_are_all_answered(upstream: FakeUpstream) -> None:
    yaml = f"models:\n  - name: m\n    deployments:\n      - {{provider: openai, api_base: '{upstream.url('ok')}'}}\n"
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    with running_gateway(yaml) as base:
        address = ("127.0.0.1", int(base.rsplit(":", 1)[1]))
        with socket.create_connection(address, timeout=10) as sock:  # three requests in one write
            sock.sendall((_post(body) + body) * 3)
            pipelined = _read_until(sock, lambda d: d.count(b"HTTP/1.1 200 OK") == 3 and d.endswith(b"}"))
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(_post(body, b"connection: close") + body)
            closing = _read_until(sock, lambda d: False)  # until the server closes
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(_post(body, b"expect: 100-continue"))
            interim = _read_until(sock, lambda d: d.endswith(b"\r\n\r\n"))
            sock.sendall(body)
            final = _read_until(sock, lambda d: b'"choices"' in d and d.endswith(b"}"))
    assert pipelined.count(b"HTTP/1.1 200 OK") == 3 and pipelined.count(b'"choices"') == 3
    assert closing.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in closing.lower()
    assert closing.endswith(b"}")  # the whole body came before the close
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n" and final.startswith(b"HTTP/1.1 200 OK")
