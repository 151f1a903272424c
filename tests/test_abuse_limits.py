"""Abuse limits over real sockets: slow heads and bodies are cut off while others are served, heads
are bounded in count and size, bodies in size as they stream, and streams in flight per key."""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.access_support import REDIS, config, create_key, drop_schema, gateway, pg_schema, pg_url
from tests.fakes import FakeUpstream
from tests.servers import running_gateway, serving_workers
from tests.test_deploy_files import NGINX_CONF, nginx_directives, size_bytes
from tokenway.asgi import BODY_LATE, Message, read_body
from tokenway.config import Limits
from tokenway.errors import PayloadTooLarge, RequestTimeout

BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
STRICT = """
models:
  - name: m
    deployments:
      - {{provider: openai, api_base: '{base}'}}
limits:
  body_timeout_s: 1
  body_min_rate: 1024
  header_timeout_s: 1
  max_body_bytes: 4096
  max_header_count: 20
  max_header_bytes: 2048
"""


@pytest.fixture(scope="module")
def strict() -> Iterator[tuple[str, int]]:
    """A gateway with tight limits: (base URL, port)."""
    fake = FakeUpstream().start()
    try:
        with running_gateway(STRICT.format(base=fake.url("ok"))) as base:
            yield base, int(base.rsplit(":", 1)[1])
    finally:
        fake.stop()


def _head(*extra: bytes, length: int | None = len(BODY)) -> bytes:
    lines = [b"POST /v1/chat/completions HTTP/1.1", b"host: gateway", b"content-type: application/json",
             *([b"content-length: %d" % length] if length is not None else []), *extra]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _answer(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection or goes quiet for ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    return data


def _envelope(answer: bytes) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"\r\ncontent-type: application/json\r\n" in head.lower() + b"\r\n", head
    error: dict[str, Any] = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _closed(sock: socket.socket) -> bool:
    """Whether the server has closed the connection (what is left to read ends)."""
    sock.settimeout(3)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def _sdk(base: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=10)


# ---- slow clients ---------------------------------------------------------------------------------


def test_a_body_that_trickles_gets_408_while_others_are_served(strict: tuple[str, int]) -> None:
    base, port = strict
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head() + BODY[:10])
        started = time.monotonic()
        # Meanwhile another client is answered at once.
        reply = _sdk(base).chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "Hello from the fake upstream."
        answer = b""
        for byte in BODY[10:]:  # one byte every 0.2 s: 54 bytes would take 11 s
            if select.select([sock], [], [], 0.2)[0]:
                answer = _answer(sock)
                break
            sock.sendall(bytes([byte]))
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert 0.9 < elapsed < 3.0
    assert b"\r\nconnection: close\r\n" in answer and b"\r\nx-request-id: req_" in answer
    error = _envelope(answer)
    assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"
    assert "did not arrive within 1 s" in error["message"]


def test_a_body_that_never_comes_gets_408(strict: tuple[str, int]) -> None:
    _, port = strict
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head())  # the head promises a body; none follows
        started = time.monotonic()
        answer = _answer(sock)
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ") and _envelope(answer)["code"] == "request_timeout"
    assert 0.9 < elapsed < 3.0  # answered at the deadline, and the connection closed (recv ended)


def test_a_large_body_that_keeps_coming_earns_its_time(strict: tuple[str, int]) -> None:
    _, port = strict
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 3000}]})
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(length=len(body)))
        started = time.monotonic()
        for at in range(0, len(body), 100):  # 2,000 bytes a second, past the 1 s deadline
            sock.sendall(body[at:at + 100])
            time.sleep(0.05)
        answer = _answer(sock, timeout=2)
    assert time.monotonic() - started > 1.4  # it took longer than body_timeout_s ...
    assert answer.startswith(b"HTTP/1.1 200 OK")  # ... and kept above body_min_rate (1,024 bytes/s)


def test_a_late_body_on_an_endpoint_that_does_not_watch_for_it_closes_the_connection(
    strict: tuple[str, int],
) -> None:
    _, port = strict
    with socket.create_connection(("127.0.0.1", port)) as sock:  # a job submit: its body is read by FastAPI
        sock.sendall(_head().replace(b"/v1/chat/completions", b"/v1/async/chat/completions") + BODY[:10])
        started = time.monotonic()
        answer = _answer(sock, timeout=6)
        elapsed = time.monotonic() - started
    assert b"200 OK" not in answer and b"202 Accepted" not in answer
    assert 1.9 < elapsed < 4.0  # the deadline, then a second for the app to answer, then closed


def test_a_head_that_trickles_is_cut_off_and_a_silent_connection_closed(strict: tuple[str, int]) -> None:
    _, port = strict
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n")
        started = time.monotonic()
        answer = b""
        for _ in range(50):  # a header byte every 0.2 s, never ending: 10 s
            if select.select([sock], [], [], 0.2)[0]:
                answer = _answer(sock)
                break
            sock.sendall(b"x")
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ") and b"\r\nconnection: close\r\n" in answer
    assert _envelope(answer)["code"] == "request_timeout"
    assert elapsed < 3.0
    with socket.create_connection(("127.0.0.1", port)) as sock:  # connects, says nothing
        started = time.monotonic()
        assert _answer(sock) == b""  # closed without a word ...
        assert time.monotonic() - started < 3.0  # ... at the deadline, not after the 5 s this waits


def test_a_head_in_parts_and_a_keep_alive_pause_longer_than_the_head_timeout_are_fine(
    strict: tuple[str, int],
) -> None:
    _, port = strict
    with socket.create_connection(("127.0.0.1", port)) as sock:
        head = _head()
        sock.sendall(head[:20])
        time.sleep(0.4)
        sock.sendall(head[20:] + BODY)
        first = _answer(sock, timeout=1.5)
        time.sleep(1.5)  # idle between requests is keep-alive time (75 s), not the head's 1 s
        sock.sendall(_head() + BODY)
        second = _answer(sock, timeout=1.5)
    assert first.startswith(b"HTTP/1.1 200 OK") and second.startswith(b"HTTP/1.1 200 OK")


# ---- heads ----------------------------------------------------------------------------------------


def test_too_many_headers_get_431_and_the_connection_closed(strict: tuple[str, int]) -> None:
    _, port = strict
    allowed = [b"x-h%d: v" % i for i in range(17)]  # + host, content-type, content-length = 20
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(*allowed) + BODY)
        assert _answer(sock, timeout=1.5).startswith(b"HTTP/1.1 200 OK")
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(*allowed, b"x-one-more: v") + BODY)
        answer = _answer(sock)  # ends: the server closed the connection
    assert answer.startswith(b"HTTP/1.1 431 ") and b"\r\nconnection: close\r\n" in answer
    error = _envelope(answer)
    assert error["code"] == "request_headers_too_large" and "more than 20 headers" in error["message"]


def test_headers_over_the_size_limit_get_431_even_a_line_that_never_ends(strict: tuple[str, int]) -> None:
    _, port = strict
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(b"x-big: " + b"a" * 2100) + BODY)
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert "over 2048 bytes" in _envelope(answer)["message"]
    with socket.create_connection(("127.0.0.1", port)) as sock:  # behind a good request, in the same read
        sock.sendall(_head() + BODY + _head(b"x-big: " + b"a" * 2100) + BODY)
        pipelined = _answer(sock)
    # Refused as it is parsed; like uvicorn's own 400 for a bad pipelined request, the refusal closes the
    # connection, and the answer to the request before it may not have been written yet.
    assert b"HTTP/1.1 431 " in pipelined
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nx-endless: ")
        sent = 0
        answer = b""
        while sent < 1_000_000 and not answer:  # 1 KB at a time, no line end, until the server answers
            try:
                sock.sendall(b"a" * 1024)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1024
            if select.select([sock], [], [], 0.02)[0]:
                answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert sent <= 2048 + 4 * 1024  # refused once the unfinished line passed the limit, not at its end


def test_serve_with_workers_takes_its_limits_from_the_config(tmp_path: Path) -> None:
    """``tokenway serve --workers 2``: each worker process gets the protocol with the config's limits."""
    fake = FakeUpstream().start()
    try:
        with serving_workers(STRICT.format(base=fake.url("ok")), tmp_path) as base:
            port = int(base.rsplit(":", 1)[1])
            for _ in range(4):  # new connections, so both workers are likely asked
                with socket.create_connection(("127.0.0.1", port)) as sock:
                    sock.sendall(_head(*[b"x-h%d: v" % i for i in range(20)]) + BODY)
                    assert _answer(sock).startswith(b"HTTP/1.1 431 ")
    finally:
        fake.stop()


# ---- bodies ---------------------------------------------------------------------------------------


def test_a_chunked_body_past_the_cap_gets_413_as_it_streams(strict: tuple[str, int]) -> None:
    _, port = strict
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(b"transfer-encoding: chunked", length=None))
        sent = 0
        answer = b""
        while sent < 1_000_000 and not answer:  # no length said; 1,000 bytes a chunk until refused
            try:
                sock.sendall(b"3e8\r\n" + b" " * 1000 + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1000
            if select.select([sock], [], [], 0.1)[0]:
                answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"\r\nconnection: close\r\n" in answer
    assert _envelope(answer)["code"] == "request_too_large"
    assert sent <= 4096 + 2 * 1000  # answered within a chunk or two of the cap: the rest was never read


def test_a_declared_length_over_the_cap_is_refused_before_any_body_is_sent(strict: tuple[str, int]) -> None:
    _, port = strict
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(length=10_000_000))
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"\r\nconnection: close\r\n" in answer
    assert "10000000 bytes; the limit is 4096" in _envelope(answer)["message"]


class _Receive:
    """An ASGI receive that hands out ``chunk``-byte pieces of an endless body, counting them."""

    def __init__(self, chunk: int, hooks: dict[str, Any] | None = None, late_after: int = 0) -> None:
        self.chunk, self.calls, self.hooks, self.late_after = chunk, 0, hooks, late_after

    async def __call__(self) -> Message:
        self.calls += 1
        if self.hooks is not None and self.calls == self.late_after:
            self.hooks[BODY_LATE] = 30.0  # what the server protocol does at the deadline
        return {"type": "http.request", "body": b"x" * self.chunk, "more_body": True}


def test_read_body_stops_at_the_cap_and_when_the_server_says_the_body_is_late() -> None:
    receive = _Receive(1000)
    with pytest.raises(PayloadTooLarge) as too_large:
        asyncio.run(read_body(receive, 4096, None))
    assert receive.calls == 5  # 5,000 bytes read: never more than one piece past the cap
    assert too_large.value.headers() == [(b"connection", b"close")]
    hooks: dict[str, Any] = {}
    receive = _Receive(10, hooks, late_after=3)
    with pytest.raises(RequestTimeout) as late:
        asyncio.run(read_body(receive, 4096, None, hooks))
    assert receive.calls == 3 and "within 30 s" in late.value.message
    assert late.value.status == 408 and late.value.headers() == [(b"connection", b"close")]


# ---- streams per key ------------------------------------------------------------------------------


def _with_reset_model(text: str, upstream: FakeUpstream) -> str:
    """``text`` with a third model ``r`` whose upstream drops every stream after three chunks."""
    reset = f"""  - name: r
    deployments:
      - provider: openai
        api_base: {upstream.url('reset')}
"""
    return text.replace("access:\n", reset + "access:\n", 1)


def _open_stream(client: openai.OpenAI, model: str = "m") -> Any:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], stream=True)


def _refused(client: openai.OpenAI) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as refused:
        _open_stream(client)
    return refused.value


def _admitted_soon(client: openai.OpenAI, count: int, model: str = "m") -> list[Any]:
    """``count`` streams opened, retrying each for up to 2 s (a settle may land a moment after an end)."""
    opened = []
    deadline = time.monotonic() + 2
    while len(opened) < count:
        try:
            opened.append(_open_stream(client, model))
        except openai.RateLimitError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    return opened


def test_streams_per_key_are_capped_and_freed_however_a_stream_ends(upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.chunk_delay = 0.3  # a stream lasts about 2 s
    yaml = _with_reset_model(config(upstream) + "limits:\n  max_streams_per_key: 2\n", upstream)
    with gateway(yaml, tmp_path) as (base, _):
        key = create_key(base)["key"]
        client = _sdk(base, key)
        first, second = _open_stream(client), _open_stream(client)
        refused = _refused(client)
        assert refused.response.headers["retry-after"] == "1"
        assert refused.code == "too_many_streams"
        assert "Too many streams in flight" in refused.message and "limit is 2" in refused.message
        # Calls that do not stream, and other keys' streams, are not counted.
        assert client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).choices
        other = _open_stream(_sdk(base, create_key(base)["key"]))
        other.close()
        # One stream read to its end, one the client hangs up on: both places come back.
        assert "".join(c.choices[0].delta.content or "" for c in first if c.choices) == "Hello from the fake upstream."
        next(iter(second))
        second.close()
        third, fourth = _admitted_soon(client, 2)
        _refused(client)  # exactly two again: nothing leaked either way
        third.close()
        fourth.close()
        # Streams the upstream breaks off give their places back too.
        for stream in _admitted_soon(client, 2, model="r"):
            words = []
            with pytest.raises(openai.APIError, match="broke off the stream"):
                for chunk in stream:
                    words.append(chunk.choices[0].delta.content)
            assert words == ["Hello", " from", " the"]  # then the upstream dropped the connection
        for stream in _admitted_soon(client, 2):
            stream.close()
        # A key's own max_streams overrides the config's.
        single = _sdk(base, create_key(base, max_streams=1)["key"])
        held = _open_stream(single)
        assert "limit is 1" in _refused(single).message
        held.close()


@pytest.fixture
def database_url() -> Iterator[str]:
    schema = pg_schema()
    yield pg_url(schema)
    drop_schema(schema)


def test_streams_per_key_are_counted_across_gateways_sharing_redis(
    upstream: FakeUpstream, tmp_path: Path, database_url: str
) -> None:
    upstream.chunk_delay = 0.3
    yaml = config(upstream) + "limits:\n  max_streams_per_key: 2\n"
    shared = {"redis_url": REDIS, "database_url": database_url}
    with gateway(yaml, tmp_path / "a", **shared) as (a, _), gateway(yaml, tmp_path / "b", **shared) as (b, _):
        key = create_key(a)["key"]
        on_a, on_b = _sdk(a, key), _sdk(b, key)
        deadline = time.monotonic() + 5
        while httpx.get(b + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 401:
            assert time.monotonic() < deadline, "the key never reached gateway b"
            time.sleep(0.1)
        held = [_open_stream(on_a), _open_stream(on_b)]
        assert "Too many streams in flight" in _refused(on_a).message
        assert "Too many streams in flight" in _refused(on_b).message
        for stream in held:
            stream.close()
        for stream in _admitted_soon(on_b, 2):
            stream.close()


# ---- nginx in front -------------------------------------------------------------------------------


def test_nginx_bounds_slow_and_large_requests_as_the_gateway_does() -> None:
    d = nginx_directives(NGINX_CONF.read_text())
    limits = Limits()
    assert size_bytes(d["client_max_body_size"][0]) == limits.max_body_bytes
    assert float(d["client_header_timeout"][0].rstrip("s")) == limits.header_timeout_s
    assert float(d["client_body_timeout"][0].rstrip("s")) == limits.body_timeout_s
    count, size = d["large_client_header_buffers"][0].split()
    assert size_bytes(size) <= limits.max_header_bytes  # no single header line nginx passes is over it
    assert d.get("proxy_request_buffering", ["on"]) == ["on"]  # a slow body ends at nginx
    assert int(count) > 0

