"""A scripted OpenAI-compatible upstream that answers every request after a fixed delay (50 ms).

Raw asyncio on uvloop with httptools, keep-alive, one fixed chat completion: a few tens of µs of
CPU per request, so it is never what limits the gateway (run.py reports its CPU). Each answer is
written ``--delay`` seconds after its request arrived, with ``loop.call_later``: no task per
request. ``python benchmarks/jobs/upstream.py --port 9311 --delay 0.05``; it stops on SIGTERM
or SIGINT (run.py has the kernel send it SIGTERM when run.py ends).
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import httptools
import uvloop

BODY = (b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"m",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the bench upstream."},'
        b'"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":6,"total_tokens":13}}')
ANSWER = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
          + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
MODELS = b'{"object":"list","data":[{"id":"m","object":"model","created":0,"owned_by":"bench"}]}'
MODELS_ANSWER = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                 + str(len(MODELS)).encode() + b"\r\n\r\n" + MODELS)


class Upstream(asyncio.Protocol):
    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.close()

    def on_url(self, url: bytes) -> None:
        self._url = url

    def on_message_complete(self) -> None:
        answer = MODELS_ANSWER if self._url.endswith(b"/models") else ANSWER
        self._loop.call_later(self._delay, self._answer, answer)

    def _answer(self, answer: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def serve(port: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Upstream(delay), "127.0.0.1", port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds before each answer")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.delay))


if __name__ == "__main__":
    main()
