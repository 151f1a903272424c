"""What streaming through the gateway adds to the time to the first chunk, and whether chunks merge.

    python benchmarks/gateway_overhead/first_chunk.py [--requests 300] [--gap-ms 10] [--first-ms 20]

Starts an upstream that streams like a model (the first event after ``--first-ms``, then one event
every ``--gap-ms``, each in its own write; its response head at once, or with the first event)
and one tokenway process in front of it, then sends the
same streaming request one at a time, alternating direct and through the gateway, over kept-alive
connections. For each request it records the time from sending the request to the first complete
SSE event, and how many events each socket read delivered. A gateway that buffers or merges
chunks shows up as reads holding more than one event; one that delays them, as added time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import uvloop

EVENTS = 8
BODY = orjson.dumps({"model": "stream", "stream": True, "messages": [{"role": "user", "content": "Count to eight."}]})


async def serve_upstream(port: int, first_s: float, gap_s: float, head_first: bool) -> None:
    """A streaming model server written by hand, so that every write is where it should be: the
    head at once (as Starlette, hence vLLM, sends it) or with the first event (as aiohttp does)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                          if line.startswith(b"content-length"))
            await reader.readexactly(length)
            response_head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            if head_first:
                writer.write(response_head)
            await asyncio.sleep(first_s)
            for i in range(EVENTS + 1):
                chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                         "choices": [{"index": 0, "delta": {"content": f" {i}"}, "finish_reason": None}]}
                event = b"data: [DONE]\n\n" if i == EVENTS else b"data: " + orjson.dumps(chunk) + b"\n\n"
                framed = b"%x\r\n%s\r\n" % (len(event), event)
                if i == 0 and not head_first:
                    framed = response_head + framed
                if i == EVENTS:
                    framed += b"0\r\n\r\n"
                writer.write(framed)
                if i < EVENTS:
                    await asyncio.sleep(gap_s)

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


class Connection:
    """One kept-alive client connection that reads a chunked SSE answer and times its events."""

    def __init__(self, port: int, path: str, key: str | None) -> None:
        self.port, self.path, self.key = port, path, key

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self) -> tuple[float, list[int]]:
        """(seconds to the first whole event, events per socket read)."""
        auth = f"authorization: Bearer {self.key}\r\n".encode() if self.key else b""
        head = (f"POST {self.path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
                f"content-length: {len(BODY)}\r\n").encode() + auth + b"\r\n"
        started = time.perf_counter()
        self.writer.write(head + BODY)
        buffer, first, per_read, seen = b"", 0.0, [], 0
        while not buffer.endswith(b"0\r\n\r\n"):  # the chunked terminator
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("closed mid-answer")
            buffer += data
            count = buffer.count(b"\n\n") - seen
            if count:
                seen += count
                per_read.append(count)
                if not first:
                    first = time.perf_counter() - started
        return first, per_read


def start_upstream(port: int, first_ms: float, gap_ms: float, head_first: bool) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(port), "--first-ms", str(first_ms),
                             "--gap-ms", str(gap_ms), *(["--head-with-first-event"] if not head_first else [])])


async def wait_for(port: int, path: str) -> None:
    for _ in range(300):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
            status = await reader.readline()
            writer.close()
            if status.split()[1:2] in ([b"200"], [b"404"], [b"405"]):
                return
        except (OSError, IndexError):
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port}")


def quantile(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


async def measure(requests: int, first_ms: float, gap_ms: float, head_first: bool) -> None:
    upstream_port, gateway_port = 9611, 8611
    upstream = start_upstream(upstream_port, first_ms, gap_ms, head_first)
    data = tempfile.mkdtemp()
    config = Path(data) / "tokenway.yaml"
    config.write_text(f"models:\n  - name: stream\n    deployments:\n      - provider: openai\n"
                      f"        api_base: http://127.0.0.1:{upstream_port}/v1\n")
    env = {**os.environ, "TOKENWAY_MASTER_KEY": "sk-bench", "TOKENWAY_DATA_DIR": data}
    gateway = subprocess.Popen([sys.executable, "-m", "tokenway", "serve", "--config", str(config),  # noqa: ASYNC220
                                "--port", str(gateway_port), "--log-level", "warning"], env=env,
                               stdout=subprocess.DEVNULL)
    try:
        await asyncio.sleep(1.0)  # the upstream answers only POSTs
        await wait_for(gateway_port, "/ready")
        direct = Connection(upstream_port, "/v1/chat/completions", None)
        through = Connection(gateway_port, "/v1/chat/completions", "sk-bench")
        await direct.open()
        await through.open()
        for _ in range(10):  # warm-up: connections, imports, caches
            await direct.request()
            await through.request()
        results: dict[str, tuple[list[float], list[int]]] = {"direct": ([], []), "tokenway": ([], [])}
        for _ in range(requests):
            for name, conn in (("direct", direct), ("tokenway", through)):
                first, per_read = await conn.request()
                results[name][0].append(first)
                results[name][1].extend(per_read)
        for name, (firsts, reads) in results.items():
            print(f"{name:9s} first event p50 {statistics.median(firsts) * 1e3:7.3f} ms  "
                  f"p99 {quantile(firsts, 0.99) * 1e3:7.3f} ms  reads {len(reads)}, "
                  f"events per read: max {max(reads)}, reads with more than one: {sum(r > 1 for r in reads)}")
        d, t = results["direct"][0], results["tokenway"][0]
        added = [b - a for a, b in zip(d, t, strict=True)]
        print(f"added by tokenway to the first event: p50 {statistics.median(added) * 1e3:.3f} ms, "
              f"p99 {quantile(added, 0.99) * 1e3:.3f} ms ({requests} requests each, "
              f"first event after {first_ms:g} ms, then one every {gap_ms:g} ms; upstream's head "
              f"{'at once' if head_first else 'with the first event'})")
    finally:
        gateway.terminate()
        upstream.terminate()
        gateway.wait()
        upstream.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--first-ms", type=float, default=20.0)
    parser.add_argument("--gap-ms", type=float, default=10.0)
    parser.add_argument("--head-with-first-event", action="store_true",
                        help="the upstream holds its response head until the first event (as aiohttp servers do)")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        uvloop.run(serve_upstream(args.serve_upstream, args.first_ms / 1000, args.gap_ms / 1000,
                                  not args.head_with_first_event))
    else:
        uvloop.run(measure(args.requests, args.first_ms, args.gap_ms, not args.head_with_first_event))
