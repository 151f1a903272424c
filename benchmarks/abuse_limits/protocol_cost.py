"""What the abuse limits cost the server protocol per request: the protocol of a base commit (before
the limits) against the working tree's, each fed the same keep-alive requests (head and body in one
read, as clients and nginx send them) through ``data_received`` with an app that answers at once.
No sockets: only the protocol's own work is measured. Rounds alternate; the medians are reported.
On a busy box the times move by more than the difference; ``instructions.sh`` counts instructions
per request instead (valgrind), which do not.

    .venv/bin/python benchmarks/abuse_limits/protocol_cost.py [BASE_COMMIT] [ROUNDS]
    .venv/bin/python benchmarks/abuse_limits/protocol_cost.py --one base|now COUNT [BASE_COMMIT]
"""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvicorn
import uvloop
from uvicorn.server import ServerState

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tokenway.http_protocol import server_options  # noqa: E402

BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}'
# The headers the openai SDK sends (13), then the body: one read.
REQUEST = b"\r\n".join([
    b"POST /v1/chat/completions HTTP/1.1", b"host: 127.0.0.1:8000", b"accept-encoding: gzip, deflate",
    b"connection: keep-alive", b"accept: application/json", b"content-type: application/json",
    b"user-agent: OpenAI/Python 1.99.0", b"x-stainless-lang: python", b"x-stainless-package-version: 1.99.0",
    b"x-stainless-os: Linux", b"x-stainless-arch: x64", b"x-stainless-runtime: CPython",
    b"authorization: Bearer tw-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", b"content-length: %d" % len(BODY),
]) + b"\r\n\r\n" + BODY
ANSWER = b'{"ok": true}'
BASE = "8928022"  # the last commit before the limits


class Transport:
    def __init__(self) -> None:
        self.closing = False

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name in ("peername", "sockname") else None

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def per_request(protocol_class: Any, count: int) -> float:
    answered = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"12")]})
        await send({"type": "http.response.body", "body": ANSWER})
        answered.set()

    config = uvicorn.Config(app, lifespan="off", log_level="critical", access_log=False)
    config.load()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={},
                              _loop=asyncio.get_running_loop())
    protocol.connection_made(Transport())
    started = time.perf_counter()
    for _ in range(count):
        answered.clear()
        protocol.data_received(REQUEST)
        await answered.wait()
    elapsed = time.perf_counter() - started
    protocol.connection_lost(None)
    return elapsed / count * 1e6


def base_protocol(commit: str) -> Any:
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:tokenway/http_protocol.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "base_http_protocol.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("base_http_protocol", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.server_options()["http"]


def main() -> None:
    if sys.argv[1:2] == ["--one"]:  # one protocol, COUNT requests, nothing printed (for instructions.sh)
        which, count = sys.argv[2], int(sys.argv[3])
        cls = base_protocol(sys.argv[4] if len(sys.argv) > 4 else BASE) if which == "base" else server_options()["http"]
        uvloop.run(per_request(cls, count))
        return
    commit = sys.argv[1] if len(sys.argv) > 1 else BASE
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    base, now = base_protocol(commit), server_options()["http"]
    results: dict[str, list[float]] = {"base": [], "now": []}
    for _ in range(rounds):
        for name, cls in (("base", base), ("now", now)):
            results[name].append(uvloop.run(per_request(cls, 20_000)))
    b, n = statistics.median(results["base"]), statistics.median(results["now"])
    print(f"protocol + minimal app, us per request (median of {rounds} rounds of 20,000): "
          f"base {commit} {b:.2f}, now {n:.2f}, difference {n - b:+.2f} ({(n - b) / b * 100:+.1f}%)")


if __name__ == "__main__":
    main()
