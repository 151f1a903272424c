"""A scripted fake upstream: a real HTTP server (aiohttp) that misbehaves on request.

The path prefix picks the script, e.g. ``/sse/v1/chat/completions`` streams normally,
``/reset/v1/...`` drops the connection mid-stream. Every request and every hang-up the
server notices is recorded, so tests can assert what the upstream saw.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

WORDS = ["Hello", " from", " the", " fake", " upstream", "."]


@dataclass
class Seen:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class FakeUpstream:
    host: str = "127.0.0.1"
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    hangups: list[str] = field(default_factory=list)
    chunk_delay: float = 0.01
    first_delay: float = 0.5
    fail_times: dict[str, int] = field(default_factory=dict)  # scenario -> failures left
    limit_times: dict[str, int] = field(default_factory=dict)  # scenario -> 429s (Retry-After: 1) left
    gauges: dict[str, str] = field(default_factory=dict)  # scenario -> Prometheus text at /{scenario}/metrics
    down: set[str] = field(default_factory=set)  # scenarios whose /v1/models answers 503 (health checks)
    # scenario -> the assistant messages ({"content": ...} and/or {"tool_calls": [...]}) its chat calls
    # answer with, in order; the last one repeats. Streams send them as chunks, with usage when asked.
    replies: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    model_lengths: dict[str, int] = field(default_factory=dict)  # scenario -> max_model_len in /models, as vLLM lists

    def url(self, scenario: str) -> str:
        return f"http://{self.host}:{self.port}/{scenario}/v1"

    # ---- lifecycle (own thread, own loop) ----
    def start(self) -> FakeUpstream:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            app = web.Application()
            app.router.add_route("*", "/{scenario}/v1/{tail:.*}", self._openai)
            app.router.add_post("/{scenario}/api/{kind}", self._ollama)
            app.router.add_get("/{scenario}/metrics", self._metrics)
            self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.2, handler_cancellation=True)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, 0)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def stop(self) -> None:
        async def close() -> None:
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def wait_for_hangup(self, timeout: float = 3.0) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.hangups:
                return True
            time.sleep(0.01)
        return False

    # ---- OpenAI-compatible scripts ----
    async def _openai(self, request: web.Request) -> web.StreamResponse:
        scenario = request.match_info["scenario"]
        tail = request.match_info["tail"]
        if tail == "models" and scenario in self.down:
            return web.json_response({"error": {"message": "down", "type": "server_error"}}, status=503)
        if tail == "models":
            entry: dict[str, Any] = {"id": "upstream-model", "object": "model"}
            if scenario in self.model_lengths:
                entry["max_model_len"] = self.model_lengths[scenario]
            return web.json_response({"object": "list", "data": [entry]})
        raw = await request.read()
        body = json.loads(raw) if raw else {}
        self.seen.append(Seen(request.path, body, {k.lower(): v for k, v in request.headers.items()}))
        left = self.fail_times.get(scenario)
        if left:
            self.fail_times[scenario] = left - 1
            return web.json_response({"error": {"message": "transient", "type": "server_error"}}, status=503)
        limited = self.limit_times.get(scenario)
        if limited:
            self.limit_times[scenario] = limited - 1
            return web.json_response(
                {"error": {"message": "slow down", "type": "rate_limit"}}, status=429, headers={"Retry-After": "1"}
            )
        if scenario == "toolong":
            return web.json_response({"error": {
                "message": "This model's maximum context length is 4096 tokens.", "type": "invalid_request_error",
                "param": "messages", "code": "context_length_exceeded"}}, status=400)
        if scenario == "status500":
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
        if scenario == "status429":
            return web.json_response(
                {"error": {"message": "slow down", "type": "rate_limit"}}, status=429, headers={"Retry-After": "7"}
            )
        if scenario == "status400":
            return web.json_response(
                {"error": {"message": "upstream says no", "type": "invalid_request_error", "param": "x", "code": None}},
                status=400,
            )
        if scenario in ("echokey", "echokey400"):  # a backend that says the gateway's key back, whole
            refused = f"Incorrect API key provided: {request.headers.get('Authorization', '')}"
            if "x-api-key" in request.headers:
                refused += f" (or {request.headers['x-api-key']})"
            status = 401 if scenario == "echokey" else 400
            return web.json_response({"error": {"message": refused, "type": "invalid_request_error", "param": None,
                                                "code": "invalid_api_key"}}, status=status)
        if scenario == "badjson":
            return web.Response(text="{not json", content_type="application/json")
        if scenario == "hang":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:  # the gateway hung up (handler_cancellation is on)
                self.hangups.append(request.path)
                raise
        if scenario == "slow":  # every answer takes first_delay seconds
            await asyncio.sleep(self.first_delay)
        if tail == "embeddings":
            return web.json_response(_embeddings(body))
        if scenario in self.replies:
            queue = self.replies[scenario]
            message = queue.pop(0) if len(queue) > 1 else queue[0]
            return await self._scripted(request, body, message)
        text_mode = tail == "completions"
        if not body.get("stream"):
            return web.json_response(_completion(body, text_mode))
        return await self._stream(request, scenario, body, text_mode)

    async def _stream(
        self, request: web.Request, scenario: str, body: dict[str, Any], text_mode: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            if scenario in ("slowfirst", "stall"):
                await asyncio.sleep(self.first_delay)
            if scenario == "resetfirst":  # headers sent, then the worker dies before the first chunk
                request.transport.close()  # type: ignore[union-attr]
                return response
            for i, word in enumerate(WORDS):
                if scenario == "reset" and i == 3:
                    request.transport.close()  # type: ignore[union-attr]
                    return response
                if scenario == "stall" and i == 2:
                    await asyncio.sleep(30)
                if scenario == "badchunk" and i == 2:
                    await response.write(b"data: {broken\n\n")
                chunk = _chunk(word, i, text_mode, last=i == len(WORDS) - 1)
                if scenario == "nullusage":  # as OpenAI does when usage is asked for
                    chunk["usage"] = None
                await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                await asyncio.sleep(self.chunk_delay)
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "upstream-model",
                         "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": len(WORDS),
                                                  "total_tokens": 7 + len(WORDS)}}
                await response.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.hangups.append(request.path)
            raise
        return response

    async def _scripted(
        self, request: web.Request, body: dict[str, Any], message: dict[str, Any]
    ) -> web.StreamResponse:
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        usage = {"prompt_tokens": 7, "completion_tokens": len(WORDS), "total_tokens": 7 + len(WORDS)}
        head = {"id": "chatcmpl-s", "created": 1, "model": "upstream-model"}
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": None, **message}, "logprobs": None,
                      "finish_reason": finish}
            return web.json_response({**head, "object": "chat.completion", "choices": [choice], "usage": usage})
        text = message.get("content") or ""
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        deltas += [{"content": text[i:i + 8]} for i in range(0, len(text), 8)]
        deltas += [{"tool_calls": [{"index": j, **call}]} for j, call in enumerate(message.get("tool_calls") or [])]
        events = [{**head, "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}
                  for delta in deltas]
        events.append({**head, "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            await asyncio.sleep(self.chunk_delay)
        await response.write(b"data: [DONE]\n\n")
        return response

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.gauges.get(request.match_info["scenario"], ""), content_type="text/plain")

    # ---- Ollama native scripts (NDJSON) ----
    async def _ollama(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append(Seen(request.path, body, {k.lower(): v for k, v in request.headers.items()}))
        kind = request.match_info["kind"]
        scenario = request.match_info["scenario"]
        if scenario in ("echokey", "echokey400"):  # a proxy in front of Ollama that says the gateway's key back
            said = f"bad credentials: {request.headers.get('Authorization', '')}"
            return web.json_response({"error": said}, status=401 if scenario == "echokey" else 400)
        if kind == "embed":
            texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
            return web.json_response({"model": body["model"], "embeddings": [fake_vector(t) for t in texts],
                                      "prompt_eval_count": sum(len(t.split()) for t in texts)})
        key = "message" if kind == "chat" else "response"
        def piece(word: str) -> dict[str, Any]:
            return {"model": body["model"], "done": False,
                    key: {"role": "assistant", "content": word} if key == "message" else word}
        final = {"model": body["model"], "done": True, "done_reason": "stop", "prompt_eval_count": 9,
                 "eval_count": len(WORDS)}
        if not body.get("stream", True):
            whole = "".join(WORDS)
            final[key] = {"role": "assistant", "content": whole} if key == "message" else whole
            return web.json_response(final)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for word in WORDS:
            await response.write(json.dumps(piece(word)).encode() + b"\n")
            await asyncio.sleep(self.chunk_delay)
        final[key] = {"role": "assistant", "content": ""} if key == "message" else ""
        await response.write(json.dumps(final).encode() + b"\n")
        return response


def _completion(body: dict[str, Any], text_mode: bool) -> dict[str, Any]:
    text = "".join(WORDS)
    usage = {"prompt_tokens": 7, "completion_tokens": len(WORDS), "total_tokens": 7 + len(WORDS)}
    if text_mode:
        return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "upstream-model",
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}], "usage": usage}
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "upstream-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": "stop"}], "usage": usage}


def _chunk(word: str, i: int, text_mode: bool, last: bool) -> dict[str, Any]:
    finish = "stop" if last else None
    if text_mode:
        return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "upstream-model",
                "choices": [{"index": 0, "text": word, "logprobs": None, "finish_reason": finish}]}
    delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "upstream-model",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def fake_vector(item: str | list[int], width: int = 8) -> list[float]:
    """A unit vector that depends only on ``item`` (a text or token ids): what the fake embeds it as."""
    seed = sum((i + 1) * ord(c) for i, c in enumerate(item)) if isinstance(item, str) else sum(item) + len(item)
    raw = [((seed * (k + 3)) % 17) - 8.0 + 0.5 for k in range(width)]
    norm = sum(v * v for v in raw) ** 0.5
    return [v / norm for v in raw]


def _embeddings(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's embeddings answer: 8 values a vector (or ``dimensions``), floats or base64."""
    given = body["input"]
    inputs = [given] if isinstance(given, str) or (given and isinstance(given[0], int)) else given
    data = []
    for i, item in enumerate(inputs):
        vector = fake_vector(item, body.get("dimensions") or 8)
        embedding: Any = vector
        if body.get("encoding_format") == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    tokens = sum(len(item.split()) if isinstance(item, str) else len(item) for item in inputs)
    return {"object": "list", "data": data, "model": "upstream-embedder",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
