"""The relay's HTTP/1.1 client against raw socket servers that answer exactly as scripted."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pytest_asyncio

from tokenway.providers import upstream
from tokenway.providers.upstream import (
    AnswerTimedOut,
    BadResponse,
    ConnectFailed,
    ConnectionBroken,
    Endpoint,
    HttpClient,
    Response,
    render_headers,
)

JSON_ANSWER = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n{"ok": true}'

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@asynccontextmanager
async def scripted_server(script: Script, tls: ssl.SSLContext | None = None) -> AsyncIterator[Endpoint]:
    """A server that runs ``script(reader, writer, connection number)`` on each connection."""
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            await script(reader, writer, connections)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Endpoint(f"{'https://localhost' if tls else 'http://127.0.0.1'}:{port}/v1/chat/completions")
    finally:
        server.close()


@pytest_asyncio.fixture
async def client() -> AsyncIterator[HttpClient]:
    """A client with the defaults, closed after the test."""
    http = HttpClient()
    yield http
    await http.aclose()


async def post(client: HttpClient, endpoint: Endpoint, headers: bytes = b"", body: bytes = b"{}", *,
               answer_s: float = 5.0, whole: bool = True) -> Response:
    return await client.post(endpoint, headers, body, connect_s=1.0, answer_s=answer_s, whole=whole)


async def requests_until_closed(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """Every request on the connection, until the client closes it."""
    while True:
        try:
            yield await read_request(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
    return head + await reader.readexactly(length)


async def test_a_kept_alive_connection_carries_the_next_request(client: HttpClient) -> None:
    per_connection: list[int] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        per_connection.append(0)
        async for request in requests_until_closed(reader):
            assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:")
            assert b"\r\nx-request-id: r1\r\n" in request and request.endswith(b'{"a":1}')
            per_connection[-1] += 1
            writer.write(JSON_ANSWER)

    async with scripted_server(script) as endpoint:
        for _ in range(3):
            resp = await post(client, endpoint, render_headers({"x-request-id": "r1"}), b'{"a":1}')
            assert resp.status == 200 and resp.header(b"content-type") == "application/json"
            assert await resp.read() == b'{"ok": true}'
    assert per_connection == [3]


async def test_an_idle_connection_the_backend_closed_is_replaced_without_an_error(client: HttpClient) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(JSON_ANSWER)
        await writer.drain()
        # and close at once, as a server whose keep-alive timeout is over does

    async with scripted_server(script) as endpoint:
        for _ in range(3):
            resp = await post(client, endpoint)
            assert await resp.read() == b'{"ok": true}'


async def test_a_reused_connection_closed_as_the_request_arrives_is_retried_once_on_a_new_one(
    client: HttpClient,
) -> None:
    connections = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        connections.append(n)
        await read_request(reader)
        writer.write(JSON_ANSWER)
        if n == 1:  # the next request finds this connection closing: no answer, no byte
            await read_request(reader)

    async with scripted_server(script) as endpoint:
        for _ in range(2):
            resp = await post(client, endpoint)
            assert await resp.read() == b'{"ok": true}'
    assert connections == [1, 2]


async def test_informational_answers_are_skipped(client: HttpClient) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n" + JSON_ANSWER)
        await asyncio.sleep(0.2)

    async with scripted_server(script) as endpoint:
        resp = await post(client, endpoint)
        assert resp.status == 200 and await resp.read() == b'{"ok": true}'


async def test_connections_left_idle_after_a_burst_are_closed_once_stale() -> None:
    closed_by_client = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        async for _ in requests_until_closed(reader):
            await asyncio.sleep(0.01)
            writer.write(JSON_ANSWER)
        closed_by_client.append(n)

    async with scripted_server(script) as endpoint:
        client = HttpClient(keepalive_s=0.2)

        async def one() -> None:
            await (await post(client, endpoint)).read()

        await asyncio.gather(one(), one(), one())  # a burst: three connections, then idle
        deadline = time.perf_counter() + 0.5
        while time.perf_counter() < deadline:  # steady traffic reuses the newest connection only
            await one()
        await asyncio.sleep(0.05)
        assert len(closed_by_client) == 2  # the two the burst left behind were closed
        await client.aclose()


async def test_a_new_connection_closed_before_any_answer_is_an_error(client: HttpClient) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)  # and hang up without a word

    async with scripted_server(script) as endpoint:
        with pytest.raises(ConnectionBroken):
            await post(client, endpoint)


async def test_a_body_without_a_length_ends_when_the_backend_closes(client: HttpClient) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\npart one, ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"part two")

    async with scripted_server(script) as endpoint:
        resp = await post(client, endpoint)
        assert await resp.read() == b"part one, part two"
        assert not resp.keep_alive


async def test_a_stream_arrives_piece_by_piece_and_its_connection_is_reused_after_a_late_end(
    client: HttpClient,
) -> None:
    events = [b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"]
    connections = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        connections.append(n)
        async for _ in requests_until_closed(reader):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for event in events:
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                await asyncio.sleep(0.1)
            writer.write(b"0\r\n\r\n")  # the message's end comes after the last event, on its own

    async with scripted_server(script) as endpoint:
        for _ in range(2):
            resp = await post(client, endpoint, answer_s=0.2, whole=False)  # the limit covers the head only
            seen = []
            async for chunk in resp.chunks():
                seen.append(chunk)
                if chunk.endswith(b"[DONE]\n\n"):
                    break
            resp.release()  # before the terminator arrived
            assert b"".join(seen) == b"".join(events)
            await asyncio.sleep(0.3)  # the terminator comes 0.1 s after the last event
    assert connections == [1]


async def test_an_answer_that_does_not_come_in_time_is_a_timeout_and_its_connection_dropped(client: HttpClient) -> None:
    closed = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345")  # half the body, then nothing
        await reader.read()  # returns when the client closes its end
        closed.set()

    async with scripted_server(script) as endpoint:
        resp = await post(client, endpoint, answer_s=0.1)  # whole: the limit runs to the last byte
        started = time.perf_counter()
        with pytest.raises(AnswerTimedOut):
            await resp.read()
        assert time.perf_counter() - started < 1.0
        await asyncio.wait_for(closed.wait(), 2)
        with pytest.raises(AnswerTimedOut):  # no head at all in time
            await post(client, endpoint, answer_s=0.05, whole=False)


async def test_a_released_stream_whose_end_never_comes_loses_its_connection(
    monkeypatch: pytest.MonkeyPatch, client: HttpClient,
) -> None:
    monkeypatch.setattr(upstream, "DRAIN_S", 0.1)
    closed = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\ne\r\ndata: [DONE]\n\n\r\n")
        await reader.read()  # no terminator, ever; returns when the client closes its end
        closed.set()

    async with scripted_server(script) as endpoint:
        resp = await post(client, endpoint, whole=False)
        async for chunk in resp.chunks():
            assert chunk == b"data: [DONE]\n\n"
            break
        resp.release()
        await asyncio.wait_for(closed.wait(), 2)


async def test_a_large_answer_is_read_whole_and_a_large_stream_is_paced(client: HttpClient) -> None:
    big = b"x" * (3 * upstream.PAUSE_BYTES)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        async for _ in requests_until_closed(reader):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(big), big))
            await writer.drain()

    async with scripted_server(script) as endpoint:
        assert await (await post(client, endpoint, answer_s=10.0)).read() == big  # no pause without a reader
        resp = await post(client, endpoint, answer_s=10.0, whole=False)
        received = 0
        async for chunk in resp.chunks():
            received += len(chunk)
            await asyncio.sleep(0)  # a slow reader: the backend is paused and resumed under it
        assert received == len(big)
        resp.release()


async def test_a_stream_cut_mid_way_raises(client: HttpClient) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n")
        await writer.drain()
        writer.transport.abort()  # a reset, not a clean end

    async with scripted_server(script) as endpoint:
        resp = await post(client, endpoint)
        seen = []
        with pytest.raises(ConnectionBroken):
            async for chunk in resp.chunks():
                seen.append(chunk)
        assert seen == [b"data: 1\n\n"]
        resp.close()


async def test_bytes_that_are_not_http_are_a_bad_response(client: HttpClient) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await asyncio.sleep(0.2)

    async with scripted_server(script) as endpoint:
        with pytest.raises(BadResponse):
            await post(client, endpoint)


async def test_nothing_listening_is_a_connect_failure(client: HttpClient) -> None:
    async with scripted_server(lambda r, w, n: asyncio.sleep(0)) as endpoint:
        pass  # closed again: the port is free now
    with pytest.raises(ConnectFailed):
        await post(client, endpoint)


async def test_a_caller_that_gives_up_waiting_drops_the_connection(client: HttpClient) -> None:
    closed = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        await reader.read()  # returns when the client closes its end
        closed.set()

    async with scripted_server(script) as endpoint:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await post(client, endpoint)
        await asyncio.wait_for(closed.wait(), 2)


def test_header_values_that_could_split_a_request_are_refused() -> None:
    assert render_headers({"a": "b"}) == b"a: b\r\n"
    with pytest.raises(ValueError):
        render_headers({"x-trace": "1\r\nhost: evil"})
    with pytest.raises(ValueError):
        Endpoint("ftp://example.com/x")
    assert Endpoint("https://api.example.com/v1/chat/completions").start == (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: api.example.com\r\n"
    )
    assert Endpoint("http://[::1]:8080/x?y=1").origin == (False, "::1", 8080)


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for ``localhost`` and its key, trusted by nobody."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


async def test_https_backends_are_verified_and_kept_alive(self_signed: tuple[Path, Path]) -> None:
    cert, key = self_signed
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    connections = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        connections.append(n)
        async for _ in requests_until_closed(reader):
            writer.write(JSON_ANSWER)

    async with scripted_server(script, server_tls) as endpoint:
        untrusting = HttpClient()  # the system's CAs: a self-signed backend is refused
        with pytest.raises(ConnectFailed):
            await post(untrusting, endpoint)
        await untrusting.aclose()
        client = HttpClient(tls=ssl.create_default_context(cafile=str(cert)))
        for _ in range(2):
            resp = await post(client, endpoint)
            assert await resp.read() == b'{"ok": true}'
        await client.aclose()
    assert len(connections) == 1  # the refused handshake never reached the script; one connection served both
