"""What Anthropic's Messages front door costs: gateway CPU per request for ``/v1/messages`` against plain
``/v1/chat/completions`` pass-through, the same conversation, JSON and streamed, in one run.

    .venv/bin/python benchmarks/translation/messages_bench.py [--rounds 30] [--requests 60] [--chunks 60] \
        [--backend scripted|relayed]

The real gateway in process, in front of a scripted provider that answers at once (tests/inprocess.py;
the translation's worst case) or relaying a scripted OpenAI-compatible backend in another process over a
socket (tests/fakes.py; what a deployment pays besides), driven straight through ASGI, with no HTTP
client or server in front in the measurement: what is timed
is the gateway's own CPU (``time.process_time``) from the request's bytes to the answer's. The variants
take turns round after round; each reports its best round (the slower rounds measure the neighbours on a
shared box). Only the ratios mean much. Results: RESULTS.md beside this file.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for tests.inprocess

from tests.inprocess import _lifespan, gateway, reply
from tokenway.app import Gateway
from tokenway.config import Settings, parse_config

CONFIG = "models: [{name: m, deployments: [{provider: fake, name: a}]}]"
SYSTEM = "You are a support assistant for an LLM gateway. Answer briefly and cite the docs."
QUESTION = ("How do I give a team its own budget, and what happens to a stream that runs past it? " * 8)[:700]
TOOL_SCHEMA = {"type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
               "required": ["query"]}


def bodies(stream: bool) -> dict[str, tuple[str, bytes]]:
    """The same conversation (a system prompt, a question, one tool) as each front door takes it."""
    chat: dict[str, Any] = {
        "model": "m", "max_tokens": 200,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        "tools": [{"type": "function", "function": {"name": "search_docs", "description": "Search the docs.",
                                                    "parameters": TOOL_SCHEMA}}]}
    messages: dict[str, Any] = {
        "model": "m", "max_tokens": 200, "system": SYSTEM, "messages": [{"role": "user", "content": QUESTION}],
        "tools": [{"name": "search_docs", "description": "Search the docs.", "input_schema": TOOL_SCHEMA}]}
    if stream:
        chat.update(stream=True, stream_options={"include_usage": True})
        messages["stream"] = True
    return {"chat": ("/v1/chat/completions", orjson.dumps(chat)), "messages": ("/v1/messages", orjson.dumps(messages))}


async def call(app: Gateway, path: str, body: bytes) -> bytes:
    """One request straight through the ASGI app; the answer's body bytes."""
    done = asyncio.Event()
    sent = False
    out: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()  # the hang-up watcher waits here until the answer is complete
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message
        else:
            out.append(message.get("body", b""))
            if not message.get("more_body"):
                done.set()

    scope = {"type": "http", "method": "POST", "path": path, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 5000), "query_string": b"", "asgi": {"version": "3.0"}}
    await app(scope, receive, send)
    return b"".join(out)


async def cpu_per_request(app: Gateway, path: str, body: bytes, requests: int) -> float:
    start = time.process_time()
    for _ in range(requests):
        await call(app, path, body)
    return (time.process_time() - start) / requests


@asynccontextmanager
async def scripted(pieces: tuple[str, ...]) -> AsyncIterator[Gateway]:
    """The gateway in front of a scripted provider that answers at once: the translation's worst case,
    as nothing else costs anything per chunk."""
    async with gateway(CONFIG) as gw:
        gw.fake("a").script(then=reply(*pieces))
        yield gw.app


# A scripted OpenAI-compatible backend (tests/fakes.py) in a process of its own, so its CPU is not counted.
_UPSTREAM = """
import sys, time
from tests.fakes import FakeUpstream
fake = FakeUpstream(chunk_delay=0).start()
fake.replies["bench"] = [{"content": sys.argv[1]}]
print(fake.port, flush=True)
time.sleep(1e9)
"""


@contextmanager
def relaying(pieces: tuple[str, ...]) -> Iterator[str]:
    """A config relaying a real backend over a socket (the openai provider: HTTP client, SSE decoding), which
    streams 8 characters a chunk: what a deployment pays per chunk besides the translation."""
    text = "".join(pieces)[: 8 * len(pieces)].ljust(8 * len(pieces), ".")
    upstream = subprocess.Popen([sys.executable, "-c", _UPSTREAM, text], stdout=subprocess.PIPE, text=True,
                                cwd=Path(__file__).resolve().parents[2])
    try:
        port = int(upstream.stdout.readline())  # type: ignore[union-attr]
        yield f"models: [{{name: m, deployments: [{{provider: openai, api_base: 'http://127.0.0.1:{port}/bench/v1'}}]}}]"
    finally:
        upstream.kill()
        upstream.wait()


@asynccontextmanager
async def relayed(config: str) -> AsyncIterator[Gateway]:
    app = Gateway(Settings(), parse_config(config))
    async with _lifespan(app):
        for _ in range(1000):  # the provider starts in the background
            if app.is_ready():
                break
            await asyncio.sleep(0.01)
        yield app


Bodies = Callable[[bool], dict[str, tuple[str, bytes]]]


async def compare(door: str, stream_end: bytes, make_bodies: Bodies, rounds: int, requests: int,
                  pieces: tuple[str, ...], relay: str | None) -> None:
    """``door``'s CPU per request against chat's, JSON and streamed, best round each. ``stream_end``: what
    a stream of ``door`` ends with (checked once); ``relay``: the config of a relayed backend
    (``relaying``); None: the scripted provider."""
    async with (scripted(pieces) if relay is None else relayed(relay)) as app:
        variants = {f"{name} {mode}": target for mode in ("json", "stream")
                    for name, target in make_bodies(mode == "stream").items()}
        for name, (path, body) in variants.items():  # warm up, and check each answers in its own format
            answer = await call(app, path, body)
            assert (stream_end if name == f"{door} stream" else b"word") in answer, answer
        best = dict.fromkeys(variants, float("inf"))
        for _ in range(rounds):
            for name, (path, body) in variants.items():
                best[name] = min(best[name], await cpu_per_request(app, path, body, requests))
    backend = "scripted" if relay is None else "relayed"
    print(f"{backend} backend: {rounds} rounds x {requests} requests per variant, streams of {len(pieces)} chunks; "
          "best round, CPU per request")
    for name, seconds in best.items():
        print(f"  {name:16s} {seconds * 1e6:8.1f} us")
    for mode in ("json", "stream"):
        ratio = best[f"{door} {mode}"] / best[f"chat {mode}"]
        print(f"  /v1/{door} vs chat, {mode}: {ratio:.3f} ({(ratio - 1) * 100:+.1f}% CPU)")


def run(door: str, stream_end: bytes, make_bodies: Bodies, description: str) -> None:
    """The command line both front doors' scripts share."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--chunks", type=int, default=60)
    parser.add_argument("--backend", choices=["scripted", "relayed"], default="scripted")
    args = parser.parse_args()
    words = tuple(f" word{i:02d}" for i in range(args.chunks))
    if args.backend == "scripted":
        asyncio.run(compare(door, stream_end, make_bodies, args.rounds, args.requests, words, None))
    else:
        with relaying(words) as relay_config:
            asyncio.run(compare(door, stream_end, make_bodies, args.rounds, args.requests, words, relay_config))


if __name__ == "__main__":
    run("messages", b"message_stop", bodies, __doc__ or "")
