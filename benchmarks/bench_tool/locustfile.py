"""Locust users for OpenAI-compatible streaming endpoints, for teams that already run Locust.

    locust -f benchmarks/bench_tool/locustfile.py --host http://127.0.0.1:8000 \
        --users 50 --spawn-rate 10 --run-time 2m --headless

Environment: LLM_MODEL (required), LLM_API_KEY, LLM_MAX_TOKENS (default 128), LLM_PROMPT.

Locust's own entry for a streamed request only times the response headers, so every request
also reports "TTFT" (first token-carrying event minus send time), "E2EL" (last data event minus
send time) and "TPOT" ((E2EL - TTFT) / (output tokens - 1), output tokens from the server's
usage), with the same definitions as `tokenway bench`. Timestamps are taken when each chunk of bytes arrives.
Locust's percentiles are bucketed and its users are gevent greenlets, so for numbers you will
publish use `tokenway bench`, which also audits its own runs.
"""

from __future__ import annotations

import json
import os
import time

from locust import HttpUser, constant, task


def _carries_token(event: dict) -> bool:
    for choice in event.get("choices") or []:
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls") or choice.get("text"):
            return True
    return False


class ChatUser(HttpUser):
    """One simulated user sending streamed chat completions back to back."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.model = os.environ["LLM_MODEL"]
        self.max_tokens = int(os.environ.get("LLM_MAX_TOKENS", "128"))
        self.prompt = os.environ.get("LLM_PROMPT", "Write a short story about a lighthouse keeper.")
        key = os.environ.get("LLM_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def _report(self, name: str, ms: float) -> None:
        self.environment.events.request.fire(
            request_type="SSE", name=name, response_time=ms, response_length=0, exception=None, context={}
        )

    @task
    def chat(self) -> None:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": self.prompt}],
            "max_tokens": self.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        start = time.perf_counter()
        first = last = None
        tokens = 0
        buf = b""
        with self.client.post(
            "/v1/chat/completions",
            json=body,
            headers=self.headers,
            stream=True,
            catch_response=True,
            name="chat.completions (to headers)",
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            for data in resp.iter_content(chunk_size=None):
                now = time.perf_counter()
                buf += data.replace(b"\r\n", b"\n")
                *complete, buf = buf.split(b"\n\n")
                for raw in complete:
                    payload = raw.removeprefix(b"data:").strip()
                    if not payload or payload == b"[DONE]":
                        continue
                    event = json.loads(payload)
                    last = now
                    if first is None and _carries_token(event):
                        first = now
                    if event.get("usage"):
                        tokens = int(event["usage"].get("completion_tokens") or 0)
            if first is None:
                resp.failure("stream ended without a token")
                return
            resp.success()
        ttft, e2el = first - start, (last or first) - start
        self._report("TTFT", ttft * 1000)
        self._report("E2EL", e2el * 1000)
        if tokens >= 2:
            self._report("TPOT", (e2el - ttft) / (tokens - 1) * 1000)
