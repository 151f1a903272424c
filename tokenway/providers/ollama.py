"""Ollama's native API (``/api/chat``, ``/api/generate``, NDJSON), translated to OpenAI's shapes.

Usage comes from Ollama's ``prompt_eval_count`` and ``eval_count``; ``done_reason`` maps to
``finish_reason``. Sampling parameters go into Ollama's ``options``.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, ClassVar

import aiohttp
import orjson

from tokenway.config import DeploymentConfig
from tokenway.context import RequestContext
from tokenway.errors import UpstreamError, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from tokenway.protocol import (
    SSE_DONE,
    Usage,
    chat_choice,
    chat_chunk,
    chat_completion,
    new_id,
    sse_event,
    text_choice,
    text_chunk,
    text_completion,
)
from tokenway.providers.base import Answer, Call, Completion, ProviderOptions, ProviderResources, Stream
from tokenway.providers.http import close_response, connect_timeout

# OpenAI request field -> Ollama option name
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "top_k": "top_k",
    "min_p": "min_p",
}


class OllamaOptions(ProviderOptions):
    keep_alive: str | None = None  # how long Ollama keeps the model loaded, e.g. "5m"


class OllamaProvider:
    Options: ClassVar[type[ProviderOptions]] = OllamaOptions

    def __init__(self, deployment: DeploymentConfig, options: ProviderOptions, resources: ProviderResources) -> None:
        assert isinstance(options, OllamaOptions)
        self.deployment = deployment
        self.options = options
        self._http = resources.http
        self._base = (deployment.api_base or "http://127.0.0.1:11434").rstrip("/")
        self._headers = {"content-type": "application/json", **deployment.headers}
        # Credentials a deployment sends (a proxy's Authorization header) that a refusal may quote back.
        self._secrets = [value.encode() for value in deployment.headers.values() if len(value) >= 8]
        self._timeout = connect_timeout(deployment)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def models(self) -> list[str]:
        async with self._http.get(f"{self._base}/api/tags", timeout=self._timeout) as resp:
            payload = await resp.json(loads=orjson.loads, content_type=None)
        return [m["name"] for m in payload.get("models", []) if isinstance(m, dict) and "name" in m]

    async def chat(self, call: Call, ctx: RequestContext) -> Answer:
        body = self._body(call)
        body["messages"] = [_message(m) for m in call.body["messages"]]
        for field in ("tools", "format"):
            if call.body.get(field):
                body[field] = call.body[field]
        if (call.body.get("response_format") or {}).get("type") == "json_object":
            body["format"] = "json"
        return await self._send("/api/chat", body, call, ctx)

    async def completions(self, call: Call, ctx: RequestContext) -> Answer:
        prompt = call.body.get("prompt", "")
        if not isinstance(prompt, str):
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            else:
                raise UpstreamRejected("Ollama takes a single text prompt.", status=400)
        body = self._body(call)
        body["prompt"] = prompt
        if call.body.get("suffix"):
            body["suffix"] = call.body["suffix"]
        return await self._send("/api/generate", body, call, ctx)

    def _body(self, call: Call) -> dict[str, Any]:
        options = {name: call.body[field] for field, name in _OPTIONS.items() if call.body.get(field) is not None}
        if call.max_tokens:
            options["num_predict"] = call.max_tokens
        body: dict[str, Any] = {"model": self.deployment.model, "stream": call.stream, "options": options}
        if self.options.keep_alive:
            body["keep_alive"] = self.options.keep_alive
        return body

    async def embeddings(self, call: Call, ctx: RequestContext) -> Answer:
        from tokenway.embeddings.ollama import embed_answer, embed_request

        body = embed_request(call, self.deployment.model or call.body["model"], self.options.keep_alive)
        resp, raw = await self._post("/api/embed", body, call, ctx)
        resp.release()
        return embed_answer(raw, call)

    async def _send(self, path: str, body: dict[str, Any], call: Call, ctx: RequestContext) -> Answer:
        resp, raw = await self._post(path, body, call, ctx)
        translate = _ChatTranslator(call) if call.kind == "chat" else _TextTranslator(call)
        if not call.stream:
            resp.release()
            return translate.completion(raw)
        return Stream(lambda stream: translate.relay(resp, stream))

    async def _post(
        self, path: str, body: dict[str, Any], call: Call, ctx: RequestContext
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        """The response (its head; and its body, read, unless the call streams) of one POST to Ollama."""
        first_byte = min(self.deployment.timeouts.first_token, ctx.remaining() or float("inf"))
        resp: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(first_byte):
                headers = {**self._headers, **ctx.upstream_headers, "x-request-id": ctx.request_id}
                resp = await self._http.post(self._base + path, data=orjson.dumps(body), headers=headers,
                                             timeout=self._timeout)
                if resp.status != 200:
                    if resp.status in (401, 403):  # the gateway's credentials, not the client's key: the operator's
                        raise UpstreamError(f"Ollama at {self._base} refused the gateway's credentials (HTTP "
                                            f"{resp.status}); check the deployment's headers.",
                                            upstream_status=resp.status)
                    answer = await resp.read()
                    for secret in self._secrets:  # whatever Ollama says, it never relays the gateway's credentials
                        answer = answer.replace(secret, b"[upstream key]")
                    detail = answer[:300].decode(errors="replace")
                    if resp.status >= 500 or resp.status == 429:
                        raise UpstreamError(f"Ollama answered {resp.status}: {detail}", upstream_status=resp.status)
                    raise UpstreamRejected(f"Ollama answered {resp.status}: {detail}", status=resp.status)
                raw = b"" if call.stream else await resp.read()
        except TimeoutError:
            close_response(resp)
            raise UpstreamTimeout(f"Ollama at {self._base} sent nothing within {first_byte:.3g}s.") from None
        except aiohttp.ClientConnectionError as exc:
            close_response(resp)
            raise UpstreamUnavailable(f"Could not reach Ollama at {self._base}: {exc}.") from None
        except BaseException:
            close_response(resp)
            raise
        return resp, raw


def _message(message: dict[str, Any]) -> dict[str, Any]:
    """OpenAI message -> Ollama message (content parts flattened; images passed as base64)."""
    content = message.get("content")
    out: dict[str, Any] = {"role": message.get("role", "user")}
    if isinstance(content, list):
        texts, images = [], []
        for part in content:
            if part.get("type") == "text":
                texts.append(part.get("text", ""))
            elif part.get("type") == "image_url":
                url = (part.get("image_url") or {}).get("url", "")
                images.append(url.split(",", 1)[1] if url.startswith("data:") else url)
        out["content"] = "\n".join(texts)
        if images:
            out["images"] = images
    else:
        out["content"] = content or ""
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {"function": {"name": c["function"]["name"], "arguments": _json_args(c["function"].get("arguments"))}}
            for c in message["tool_calls"]
        ]
    return out


def _json_args(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return {}
    return arguments or {}


# The longest NDJSON line taken from Ollama: a tool call comes whole in one line, arguments and all.
MAX_LINE_BYTES = 32 * 1024 * 1024


async def _lines(content: aiohttp.StreamReader) -> AsyncGenerator[bytes, None]:
    """Ollama's NDJSON lines, of any length up to ``MAX_LINE_BYTES``. Not ``async for`` over the stream:
    aiohttp's readline refuses a line over 128 KiB with an error that is no ``ClientError`` (a tool call
    with large arguments broke the stream; found by tests/test_properties_ollama.py)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in content.iter_any():
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            parts.append(chunk[start:end + 1])
            yield b"".join(parts)
            parts, size, start = [], 0, end + 1
        if start < len(chunk):
            parts.append(chunk[start:])
            size += len(chunk) - start
            if size > MAX_LINE_BYTES:
                raise UpstreamError(f"Ollama sent a line over {MAX_LINE_BYTES} bytes.")
    if parts:
        yield b"".join(parts)


def _usage(line: dict[str, Any]) -> Usage:
    return Usage(
        prompt_tokens=int(line.get("prompt_eval_count") or 0), completion_tokens=int(line.get("eval_count") or 0)
    )


def _finish_reason(line: dict[str, Any], tool_calls: bool = False) -> str:
    if tool_calls:
        return "tool_calls"
    return "length" if line.get("done_reason") == "length" else "stop"


def _parse_line(raw: bytes) -> dict[str, Any]:
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError("Ollama sent a line that is not JSON.") from None
    if not isinstance(line, dict):
        raise UpstreamError("Ollama sent a line that is not a JSON object.")
    if "error" in line:
        raise UpstreamError(f"Ollama reported an error: {line['error']}")
    return line


class _Translator(ABC):
    def __init__(self, call: Call) -> None:
        self.call = call
        self.id = new_id("chatcmpl" if call.kind == "chat" else "cmpl")
        self.created = int(time.time())
        self.model = call.body["model"]

    def completion(self, raw: bytes) -> Completion:
        line = _parse_line(raw)
        usage = _usage(line)
        return Completion(body=orjson.dumps(self.whole(line, usage)), usage=usage)

    async def relay(self, resp: aiohttp.ClientResponse, stream: Stream) -> AsyncIterator[bytes]:
        finished = False
        try:
            yield self.opening()
            async with aclosing(_lines(resp.content)) as lines:
                async for raw in lines:
                    if not raw.strip():
                        continue
                    line = _parse_line(raw)
                    block = self.piece(line)
                    if line.get("done"):
                        usage = _usage(line)
                        stream.usage = usage
                        block += self.closing(line, usage)
                        finished = True
                    if block:
                        yield block
                    if finished:
                        break
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"Ollama broke off the stream: {exc}.") from None
        finally:
            resp.release() if finished else resp.close()
        if not finished:
            raise UpstreamError("Ollama ended the stream before it was done.")

    @abstractmethod
    def whole(self, line: dict[str, Any], usage: Usage) -> dict[str, Any]: ...

    @abstractmethod
    def opening(self) -> bytes: ...

    @abstractmethod
    def piece(self, line: dict[str, Any]) -> bytes: ...

    @abstractmethod
    def closing(self, line: dict[str, Any], usage: Usage) -> bytes: ...


class _ChatTranslator(_Translator):
    def __init__(self, call: Call) -> None:
        super().__init__(call)
        self.saw_tool_calls = False

    def whole(self, line: dict[str, Any], usage: Usage) -> dict[str, Any]:
        message = line.get("message") or {}
        choice = chat_choice(0, message.get("content", ""), _finish_reason(line, bool(message.get("tool_calls"))))
        if message.get("tool_calls"):
            choice["message"]["tool_calls"] = _tool_calls(message["tool_calls"])
        return chat_completion(id=self.id, model=self.model, choices=[choice], usage=usage, created=self.created)

    def opening(self) -> bytes:
        return sse_event(self._chunk({"role": "assistant", "content": ""}))

    def piece(self, line: dict[str, Any]) -> bytes:
        message = line.get("message") or {}
        delta: dict[str, Any] = {}
        if message.get("content"):
            delta["content"] = message["content"]
        if message.get("tool_calls"):
            self.saw_tool_calls = True
            delta["tool_calls"] = [dict(c, index=i) for i, c in enumerate(_tool_calls(message["tool_calls"]))]
        return sse_event(self._chunk(delta)) if delta else b""

    def closing(self, line: dict[str, Any], usage: Usage) -> bytes:
        out = sse_event(self._chunk({}, finish_reason=_finish_reason(line, self.saw_tool_calls)))
        if self.call.include_usage:
            out += sse_event(chat_chunk(id=self.id, model=self.model, created=self.created, usage=usage))
        return out + SSE_DONE

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return chat_chunk(id=self.id, model=self.model, created=self.created, delta=delta, finish_reason=finish_reason)


class _TextTranslator(_Translator):
    def whole(self, line: dict[str, Any], usage: Usage) -> dict[str, Any]:
        choice = text_choice(0, line.get("response", ""), _finish_reason(line))
        return text_completion(id=self.id, model=self.model, choices=[choice], usage=usage, created=self.created)

    def opening(self) -> bytes:
        return b""

    def piece(self, line: dict[str, Any]) -> bytes:
        text = line.get("response")
        if not text:
            return b""
        return sse_event(text_chunk(id=self.id, model=self.model, created=self.created, text=text))

    def closing(self, line: dict[str, Any], usage: Usage) -> bytes:
        out = sse_event(
            text_chunk(id=self.id, model=self.model, created=self.created, text="", finish_reason=_finish_reason(line))
        )
        if self.call.include_usage:
            out += sse_event(text_chunk(id=self.id, model=self.model, created=self.created, usage=usage))
        return out + SSE_DONE


def _tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, call in enumerate(calls):
        function = call.get("function") or {}
        arguments = function.get("arguments")
        out.append({
            "id": call.get("id") or f"call_{i}",
            "type": "function",
            "function": {
                "name": function.get("name", ""),
                "arguments": arguments if isinstance(arguments, str) else orjson.dumps(arguments or {}).decode(),
            },
        })
    return out
