"""The HTTP side of the benchmark: build an OpenAI request, send it, and timestamp bytes.

Timing rule: `time.perf_counter()` is read the moment a read of the response body returns bytes,
before anything is decoded or parsed. Every SSE event completed by that read gets that timestamp.
Events that arrive in one read therefore share a timestamp, which is exactly what the audit's
zero-gap share measures. JSON parsing happens after the stream ends (`tokenway.bench.records`),
so parsing cost never lands inside a measured interval.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from tokenway.protocol import SSEDecoder


@dataclass(frozen=True)
class Endpoint:
    """Where and how to send: base URL (…/v1), API flavour, auth and extra request fields."""

    base_url: str
    model: str
    api: str = "chat"  # "chat" -> /chat/completions, "completions" -> /completions
    api_key: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    ignore_eos: bool = False
    min_tokens: bool = False
    continuous_usage: bool = False
    extra_body: tuple[tuple[str, Any], ...] = ()
    timeout_s: float = 600.0

    @property
    def url(self) -> str:
        path = "/chat/completions" if self.api == "chat" else "/completions"
        return self.base_url.rstrip("/") + path

    def request_headers(self) -> dict[str, str]:
        out = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            out["Authorization"] = f"Bearer {self.api_key}"
        out.update(dict(self.headers))
        return out


def build_payload(ep: Endpoint, messages: list[dict[str, str]], max_tokens: int) -> bytes:
    """The request body. For the completions API the conversation is flattened into a prompt."""
    body: dict[str, Any] = {"model": ep.model, "max_tokens": max_tokens, "stream": True}
    if ep.api == "chat":
        body["messages"] = messages
    else:
        body["prompt"] = "\n\n".join(m["content"] for m in messages)
    stream_options: dict[str, Any] = {"include_usage": True}
    if ep.continuous_usage:
        stream_options["continuous_usage_stats"] = True
    body["stream_options"] = stream_options
    if ep.ignore_eos:
        body["ignore_eos"] = True
    if ep.min_tokens:
        body["min_tokens"] = max_tokens
    extra = dict(ep.extra_body)
    body.update(extra)
    if not body.get("stream") and "stream_options" not in extra:
        del body["stream_options"]  # OpenAI refuses stream_options on a request that does not stream
    return orjson.dumps(body)


@dataclass
class Exchange:
    """Raw outcome of one HTTP exchange: times (perf_counter seconds) and undecoded events."""

    start: float
    end: float = 0.0
    status: int = 0
    events: list[tuple[float, bytes]] = field(default_factory=list)
    body: bytes = b""
    error: str | None = None  # transport-level failure type: timeout, connection, ...
    error_detail: str = ""


async def _read_sse(resp: aiohttp.ClientResponse, ex: Exchange) -> None:
    # The gateway's one SSE decoder: any line ends, events cut anywhere across reads. The events a
    # read completed keep that read's arrival time; an event the stream never finished is dropped.
    decoder = SSEDecoder()
    clock = time.perf_counter
    async for data in resp.content.iter_any():
        now = clock()
        events = decoder.feed(data)
        if events:
            ex.events.append((now, events))
    ex.end = clock()


async def send(session: aiohttp.ClientSession, ep: Endpoint, payload: bytes, headers: dict[str, str]) -> Exchange:
    """POST `payload` and capture the response. Never raises for network or HTTP errors: they are
    results to count, recorded as `status`/`error` on the Exchange."""
    ex = Exchange(start=time.perf_counter())
    try:
        async with session.post(ep.url, data=payload, headers=headers) as resp:
            ex.status = resp.status
            ctype = resp.headers.get("Content-Type", "")
            if resp.status != 200 or "text/event-stream" not in ctype:
                # An error body, or a server that ignored stream=true: one event at its last byte.
                ex.body = await resp.read()
                ex.end = time.perf_counter()
                if resp.status == 200:
                    ex.events.append((ex.end, b"data: " + ex.body))
                return ex
            await _read_sse(resp, ex)
    except TimeoutError as exc:
        ex.error, ex.error_detail = "timeout", repr(exc)
    except aiohttp.ClientPayloadError as exc:
        ex.error, ex.error_detail = "stream_broken", str(exc)
    except aiohttp.ServerDisconnectedError as exc:
        ex.error, ex.error_detail = "disconnected", str(exc)
    except aiohttp.ClientConnectionError as exc:
        ex.error, ex.error_detail = "connection_error", str(exc)
    except aiohttp.ClientError as exc:
        ex.error, ex.error_detail = "client_error", str(exc)
    if not ex.end:
        ex.end = time.perf_counter()
    return ex


def make_session(ep: Endpoint, max_connections: int) -> aiohttp.ClientSession:
    """One pooled session for the run. The pool is at least as large as the peak concurrency so
    that no request waits for a connection inside the measured TTFT."""
    connector = aiohttp.TCPConnector(limit=max(1, max_connections), limit_per_host=0, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=ep.timeout_s, sock_connect=30)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True)
