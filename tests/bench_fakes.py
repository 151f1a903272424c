"""A scripted OpenAI-compatible upstream for the bench tests: a real aiohttp server on 127.0.0.1.

It runs in its own process, as any real server does: a thread would share the client's GIL, and
the interpreter's 5 ms switch interval would then show up as fake latency. Each request picks its
script with an `X-Fake-Script` header (JSON of `Script` fields), which the benchmark sends as a
custom header, so one server serves every test. Token events are sent on an absolute schedule
(request arrival + ttft + i * itl), so sleep overshoot does not accumulate and the expected
metrics follow directly from the script.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import multiprocessing.connection
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import orjson
from aiohttp import web


@dataclass
class Script:
    """What the fake server does for each request."""

    ttft_ms: float = 100.0
    itl_ms: float = 20.0
    tokens: int | None = None  # default: the request's max_tokens
    tokens_per_event: int = 1  # > 1: several tokens merged into one SSE event
    usage: bool = True
    continuous_usage: bool = False  # usage with cumulative completion_tokens on every chunk
    coalesce: bool = False  # write all events of a request in one write at the end
    fail_every: int = 0  # every n-th request gets `fail_status`
    fail_status: int = 500

    def header(self) -> str:
        """The `-H` argument that selects this script."""
        return "X-Fake-Script: " + orjson.dumps(asdict(self)).decode()


def _chunk(content: str | None, finish: str | None = None, usage: dict | None = None, *, chat: bool = True) -> bytes:
    if chat:
        choice = {
            "index": 0,
            "delta": {} if content is None else {"content": content},
            "finish_reason": finish,
        }
        obj: dict = {"id": "x", "object": "chat.completion.chunk", "model": "fake", "choices": [choice]}
    else:
        obj = {
            "id": "x",
            "object": "text_completion",
            "model": "fake",
            "choices": [{"index": 0, "text": content or "", "finish_reason": finish}],
        }
    if usage is not None:
        obj["usage"] = usage
    # Ground truth for the tests: when the server wrote the event, on the same system-wide
    # monotonic clock (CLOCK_MONOTONIC) that the client's perf_counter reads.
    obj["x_t"] = time.perf_counter()
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class FakeUpstream:
    """The request handlers; `seen` keeps the last requests for `GET /seen`."""

    def __init__(self) -> None:
        self.counters: dict[str, itertools.count[int]] = {}
        self.seen: list[dict] = []

    async def seen_handler(self, request: web.Request) -> web.Response:
        return web.json_response(self.seen[-50:])

    async def handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.perf_counter()
        raw_script = request.headers.get("X-Fake-Script", "{}")
        s = Script(**orjson.loads(raw_script))
        body = await request.json()
        self.seen.append({"body": body, "headers": dict(request.headers)})
        n = next(self.counters.setdefault(raw_script, itertools.count(1)))
        if s.fail_every and n % s.fail_every == 0:
            err = {"error": {"message": "scripted failure", "type": "server_error", "param": None, "code": None}}
            return web.json_response(err, status=s.fail_status)
        chat = request.path.endswith("/chat/completions")
        total = s.tokens if s.tokens is not None else int(body.get("max_tokens", 16))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        held: list[bytes] = []
        sent = 0
        while sent < total:
            k = min(s.tokens_per_event, total - sent)
            # The event is due when its last token is generated.
            due = arrived + (s.ttft_ms + (sent + k - 1) * s.itl_ms) / 1000.0
            delay = due - time.perf_counter()
            if delay > 0 and not s.coalesce:
                await asyncio.sleep(delay)
            sent += k
            usage = None
            if s.continuous_usage:
                usage = {"prompt_tokens": 7, "completion_tokens": sent, "total_tokens": 7 + sent}
            finish = "length" if sent == total else None
            data = _chunk(" tok" * k, finish, usage, chat=chat)
            if s.coalesce:
                held.append(data)
            else:
                await resp.write(data)
        if s.coalesce:
            delay = arrived + (s.ttft_ms + (total - 1) * s.itl_ms) / 1000.0 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await resp.write(b"".join(held))
        if s.usage:
            final = {"prompt_tokens": 7, "completion_tokens": total, "total_tokens": 7 + total}
            last = {"id": "x", "choices": [], "usage": final, "x_t": time.perf_counter()}
            await resp.write(b"data: " + orjson.dumps(last) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _run_server(port_out: multiprocessing.connection.Connection) -> None:
    fake = FakeUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    app.router.add_post("/v1/completions", fake.handle)
    app.router.add_get("/seen", fake.seen_handler)

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_out.send(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(main())


@contextmanager
def serve() -> Iterator[str]:
    """Run the fake upstream in a child process on a random port; yield its /v1 base URL."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_run_server, args=(child,), daemon=True)
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("fake upstream did not start within 30 s")
        yield f"http://127.0.0.1:{parent.recv()}/v1"
    finally:
        proc.terminate()
        proc.join(10)
