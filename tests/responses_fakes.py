"""A scripted upstream that speaks OpenAI's Responses API natively (``POST /{scenario}/v1/responses``).

It answers with a ``response`` object, or streams Responses events the way OpenAI writes them
(``event:`` lines, CRLF line ends, events split across writes), and keeps what it was sent. Scenarios:
``ok`` answers; ``break`` streams part of the answer and drops the connection; ``reasoning`` answers
with a reasoning item and a built-in tool call, items only a native backend makes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.discovery_fakes import AppThread

USAGE = {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5,
         "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 16}
TEXT = "Native hello."


@dataclass
class NativeResponsesUpstream:
    seen: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def url(self, scenario: str) -> str:
        return f"http://127.0.0.1:{self.port}/{scenario}/v1"

    def start(self) -> NativeResponsesUpstream:
        app = web.Application()
        app.router.add_post("/{scenario}/v1/responses", self._responses)
        app.router.add_get("/{scenario}/v1/models", self._models)
        app.router.add_post("/{scenario}/v1/chat/completions", self._chat)
        self._served = AppThread(app, "127.0.0.1", 0)
        self.port = self._served.port
        return self

    def stop(self) -> None:
        self._served.stop()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "upstream-model", "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.Response:
        """It speaks chat too, as OpenAI does."""
        body = await request.json()
        return web.json_response({
            "id": "chatcmpl-up", "object": "chat.completion", "created": 1700000000, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        scenario = request.match_info["scenario"]
        body = await request.json()
        self.seen.append(body)
        response = self.response(body, scenario)
        if not body.get("stream"):
            return web.json_response(response)
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await stream.prepare(request)
        wire = b"".join(event_bytes(event) for event in self.events(response))
        if scenario == "break":
            wire = wire[: len(wire) // 2]
        for start in range(0, len(wire), 97):  # pieces that split events and their line ends
            await stream.write(wire[start:start + 97])
            await asyncio.sleep(0.001)
        if scenario == "break":
            assert request.transport is not None
            request.transport.close()
            return stream
        await stream.write_eof()
        return stream

    def response(self, body: dict[str, Any], scenario: str) -> dict[str, Any]:
        output: list[dict[str, Any]] = []
        if scenario == "reasoning":
            output += [{"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Thought."}]},
                       {"id": "ws_1", "type": "web_search_call", "status": "completed",
                        "action": {"type": "search", "query": "weather"}}]
        output.append({"id": f"msg_up{next(self._ids)}", "type": "message", "status": "completed", "role": "assistant",
                       "content": [{"type": "output_text", "text": TEXT, "annotations": [], "logprobs": []}]})
        return {"id": f"resp_up{next(self._ids)}", "object": "response", "created_at": 1700000000,
                "status": "completed", "error": None, "incomplete_details": None, "model": body["model"],
                "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": body.get("tools", []),
                "previous_response_id": body.get("previous_response_id"), "usage": USAGE, "metadata": {}}

    @staticmethod
    def events(response: dict[str, Any]) -> list[dict[str, Any]]:
        started = {**response, "status": "in_progress", "output": [], "usage": None}
        message = response["output"][-1]
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": started},
            {"type": "response.in_progress", "response": started},
            {"type": "response.output_item.added", "output_index": 0,
             "item": {**message, "status": "in_progress", "content": []}},
            {"type": "response.content_part.added", "item_id": message["id"], "output_index": 0, "content_index": 0,
             "part": {"type": "output_text", "text": "", "annotations": []}},
        ]
        for word in ("Native", " hello", "."):
            events.append({"type": "response.output_text.delta", "item_id": message["id"], "output_index": 0,
                           "content_index": 0, "delta": word, "logprobs": []})
        events += [
            {"type": "response.output_text.done", "item_id": message["id"], "output_index": 0, "content_index": 0,
             "text": TEXT, "logprobs": []},
            {"type": "response.output_item.done", "output_index": 0, "item": message},
            {"type": "response.completed", "response": response},
        ]
        return [{**event, "sequence_number": n} for n, event in enumerate(events)]


def event_bytes(event: dict[str, Any]) -> bytes:
    """One event as OpenAI writes it, with CRLF line ends (which the relay makes ``\\n``)."""
    return f"event: {event['type']}\r\ndata: {json.dumps(event)}\r\n\r\n".encode()
