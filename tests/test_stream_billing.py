"""A stream cut short is billed: its prompt and the tokens delivered, marked partial, settled on the budget.

The backend generated (and charged for) every token it sent, so a client cannot dodge its budget by
hanging up before the usage chunk. Each way a stream can end is driven over real sockets against a
scripted upstream that streams one token per chunk and never reports usage unless it finishes.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.access_support import MASTER, create_key, gateway
from tests.servers import free_port

PRICE = 1000.0  # dollars per 1M tokens: a token costs 1,000,000 nano-dollars
NANOS_PER_TOKEN = 1_000_000
PROMPT = [{"role": "user", "content": "Count to two hundred, one word per line."}]
PROMPT_ESTIMATE = -(-len(PROMPT[0]["content"]) // 4) + 4 + 3  # the gateway's estimate (usage.cost)


class TokenUpstream:
    """Streams ``tokens`` one-token chunks; then ends per the path: /done (usage, [DONE]), /reset
    (drops the connection after 30), /stall (goes silent after 30)."""

    def __init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        self._ready.wait(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/{end}/v1/chat/completions", self._stream)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        end = request.match_info["end"]
        body = await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        await response.write(_event({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}))
        for i in range(200):
            if i == 30 and end == "reset":
                request.transport.close()  # type: ignore[union-attr]
                return response
            if i == 30 and end == "stall":
                await asyncio.sleep(30)
            await response.write(_event({**chunk, "choices": [{"index": 0, "delta": {"content": f" {i}"}}]}))
            await asyncio.sleep(0.002)
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 20, "completion_tokens": 200, "total_tokens": 220}
            await response.write(_event({**chunk, "choices": [], "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        return response

    def url(self, end: str) -> str:
        return f"http://127.0.0.1:{self.port}/{end}/v1"

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


@pytest.fixture(scope="module")
def tokens_upstream() -> Iterator[TokenUpstream]:
    server = TokenUpstream()
    yield server
    server.stop()


def _config(upstream: TokenUpstream, end: str) -> str:
    return f"""
models:
  - name: m
    deployments:
      - provider: openai
        api_base: {upstream.url(end)}
        price: {{input_per_1m: {PRICE}, output_per_1m: {PRICE}}}
        timeouts: {{idle: 0.5}}
access:
  keys_refresh_s: 0.2
  ledger_flush_s: 0.1
"""


def _stream(base: str, key: str, read_chunks: int | None) -> list[str]:
    """Stream a chat; read ``read_chunks`` content chunks and hang up (None: read to the end)."""
    contents: list[str] = []
    request = {"model": "m", "messages": PROMPT, "stream": True, "max_tokens": 500}
    with httpx.stream("POST", base + "/v1/chat/completions", json=request, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content"' in line:
                contents.append(line)
                if read_chunks is not None and len(contents) >= read_chunks:
                    break
    return contents


def _ledger_row(base: str, data_dir: Path, key_id: str) -> tuple[int, int, int, int, int]:
    """(prompt tokens, completion tokens, cost, status, partial) of the key's one ledger row."""
    for _ in range(50):
        httpx.get(base + "/admin/usage", headers={"Authorization": f"Bearer {MASTER}"})  # flushes the ledger
        db = sqlite3.connect(data_dir / "tokenway.db")
        rows = db.execute("SELECT prompt_tokens, completion_tokens, cost_nanos, status, partial FROM tokenway_usage "
                          "WHERE key_id = ?", (key_id,)).fetchall()
        db.close()
        if rows:
            assert len(rows) == 1
            return rows[0]
        asyncio.run(asyncio.sleep(0.1))
    raise AssertionError("no ledger row")


def _committed(base: str, key_id: str) -> int:
    state = httpx.get(f"{base}/admin/keys/{key_id}", headers={"Authorization": f"Bearer {MASTER}"}).json()
    return round(state["budgets"][0]["committed_usd"] * 1e9)


@pytest.mark.parametrize(("end", "read", "status"), [
    ("done", 30, 499),  # the client hangs up after 30 chunks
    ("reset", None, 502),  # the upstream drops the connection after 30
    ("stall", None, 504),  # the upstream goes silent after 30: the idle timeout ends it
])
def test_a_stream_cut_short_is_billed_for_its_prompt_and_the_tokens_delivered(
    tokens_upstream: TokenUpstream, tmp_path: Path, end: str, read: int | None, status: int
) -> None:
    with gateway(_config(tokens_upstream, end), tmp_path) as (base, _):
        key = create_key(base, budget="100/day")
        contents = _stream(base, key["key"], read)
        prompt, completion, cost, logged_status, partial = _ledger_row(base, tmp_path, key["id"])
        committed = _committed(base, key["id"])
    assert len(contents) == 30
    assert (logged_status, partial) == (status, 1)
    assert prompt == PROMPT_ESTIMATE
    # Delivered: the 30 read; a hung-up client may have had a few more chunks in flight to it.
    assert 30 <= completion <= 40 if end == "done" else completion == 30
    assert cost == (prompt + completion) * NANOS_PER_TOKEN
    assert committed == cost  # the budget was settled to the same charge, the rest of the hold returned


def test_a_stream_that_finishes_is_billed_exactly_from_the_backends_usage(
    tokens_upstream: TokenUpstream, tmp_path: Path
) -> None:
    with gateway(_config(tokens_upstream, "done"), tmp_path) as (base, _):
        key = create_key(base, budget="100/day")
        contents = _stream(base, key["key"], None)
        row = _ledger_row(base, tmp_path, key["id"])
        committed = _committed(base, key["id"])
    assert len(contents) == 200
    assert row == (20, 200, 220 * NANOS_PER_TOKEN, 200, 0)
    assert committed == 220 * NANOS_PER_TOKEN
