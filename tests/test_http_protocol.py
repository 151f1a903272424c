"""The server protocol sends a response's head with its body, and loses nothing on the way."""

from __future__ import annotations

import asyncio
import importlib.metadata
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from tests.fakes import FakeUpstream
from tests.servers import free_port, running_gateway
from tokenway.http_protocol import TESTED_UVICORN, CoalescingHttpToolsProtocol, CoalescingTransport


def test_uvicorn_is_a_version_the_protocol_was_tested_on() -> None:
    version = importlib.metadata.version("uvicorn")
    assert version.rsplit(".", 1)[0] in TESTED_UVICORN, (
        f"uvicorn {version} is installed, but tokenway/http_protocol.py subclasses uvicorn's private "
        f"HttpToolsProtocol and was tested only on uvicorn {', '.join(TESTED_UVICORN)}.x. Install one of those, "
        "or run this file's tests and benchmarks/ab/run.sh (the subclass against plain http='httptools') on the "
        "new version, then add it to TESTED_UVICORN and to pyproject.toml's uvicorn range."
    )


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


async def _heads_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Responses whose heads the server must frame, refuse or close on, by path."""
    if scope["type"] != "http":
        return
    await receive()
    path = scope["path"]
    if path == "/unframed":  # no length: the server must chunk it
        await send({"type": "http.response.start", "status": 200, "headers": [(b"X-Mixed-Case", b"yes")]})
        await send({"type": "http.response.body", "body": b"hello", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/split":  # a value that would inject a header: refused, nothing sent
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-bad", b"a\r\nset-cookie: evil")]})
    elif path == "/close":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2"), (b"Connection", b"close")]})
        await send({"type": "http.response.body", "body": b"ok"})


@contextmanager
def _serving(app: Any) -> Iterator[int]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, loop="uvloop", http=CoalescingHttpToolsProtocol, lifespan="off",
        log_level="critical", access_log=False,
    ))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def _exchange(port: int, path: str) -> bytes:
    """One GET; everything the server sends until it closes the connection (or goes quiet)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nhost: t\r\n\r\n" % path.encode())
        return _read_until(sock, lambda data: data.endswith(b"0\r\n\r\n"))


def test_held_heads_still_frame_refuse_and_close_as_uvicorn_does() -> None:
    with _serving(_heads_app) as port:
        unframed = _exchange(port, "/unframed")
        assert unframed.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nx-mixed-case: yes\r\n" in unframed and b"\r\ntransfer-encoding: chunked\r\n" in unframed
        assert unframed.endswith(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        assert _exchange(port, "/split") == b""  # the connection is dropped; no byte of that head left
        closing = _exchange(port, "/close")
        assert b"\r\nconnection: close\r\n" in closing and closing.endswith(b"\r\n\r\nok")


def test_the_server_does_not_announce_itself(upstream: FakeUpstream) -> None:
    yaml = f"models:\n  - name: m\n    deployments:\n      - {{provider: openai, api_base: '{upstream.url('ok')}'}}\n"
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    with running_gateway(yaml) as base:
        address = ("127.0.0.1", int(base.rsplit(":", 1)[1]))
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(_post(body) + body)
            answer = _read_until(sock, lambda d: b'"choices"' in d and d.endswith(b"}"))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\ndate: " in answer
    assert b"\r\nserver:" not in answer.lower()
