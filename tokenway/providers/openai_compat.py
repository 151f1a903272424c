"""Any backend that speaks OpenAI's API: OpenAI, vLLM, SGLang, TGI, llama.cpp server, LM Studio.

Bodies are relayed, not rebuilt: the request is the client's dict with ``model`` swapped for
the upstream name; a non-streaming body goes back as it came. A stream is decoded as it arrives
and handed on in the gateway's one framing (``protocol``'s SSE section), so no one downstream
sees half an event or the backend's own line ends; each upstream read's whole events are
forwarded at once.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal

import orjson

from tokenway.config import DeploymentConfig
from tokenway.context import RequestContext
from tokenway.errors import (
    GatewayError,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tokenway.protocol import SSEDecoder, Usage, ends_stream, iter_sse_data, response_end, sse_events
from tokenway.providers.base import (
    Answer,
    Call,
    Completion,
    ProviderOptions,
    ProviderResources,
    Stream,
    not_served,
)
from tokenway.providers.http import close_response, connect_timeout
from tokenway.providers.upstream import (
    AnswerTimedOut,
    BadResponse,
    Endpoint,
    HttpClient,
    Response,
    UpstreamHttpError,
    render_headers,
)


class OpenAICompatOptions(ProviderOptions):
    # Ask the upstream for a usage chunk even when the client did not, so accounting is exact;
    # that chunk is then dropped before it reaches the client. Turn off for servers that
    # reject ``stream_options``.
    stream_usage: bool = True
    # ``native``: the backend speaks OpenAI's Responses API, and /v1/responses calls are relayed to its
    # /responses as they are (built-in tools, reasoning items and its own stored state included) instead
    # of being translated to chat. Every deployment of the model must say the same (docs/responses.md).
    responses: Literal["translate", "native"] = "translate"


class OpenAICompatProvider:
    Options: ClassVar[type[ProviderOptions]] = OpenAICompatOptions

    def __init__(self, deployment: DeploymentConfig, options: ProviderOptions, resources: ProviderResources) -> None:
        if not deployment.api_base:
            raise ValueError(f"deployment {deployment.name}: provider 'openai' needs api_base")
        assert isinstance(options, OpenAICompatOptions)
        self.deployment = deployment
        self.options = options
        self._http = resources.http  # off the hot path: the model list
        self._upstream: HttpClient = resources.upstream
        self._base = deployment.api_base.rstrip("/")
        paths = ("/chat/completions", "/completions", "/embeddings", "/responses")
        self._endpoints = {path: Endpoint(self._base + path) for path in paths}
        headers = {"content-type": "application/json", **deployment.headers}
        key = deployment.api_key()
        if key:
            headers["authorization"] = f"Bearer {key}"
        # The gateway's credentials for this backend (its key, and any header set in the config, e.g.
        # Azure's api-key): never relayed to a client, even when the backend's error says them back.
        # Values under 8 characters ("true", "v1") are no secret and would blank out ordinary words.
        self._secrets = [value.encode() for value in (key, *deployment.headers.values()) if value and len(value) >= 8]
        self._headers = headers
        # Rendered once; each call adds only its request id (and trace headers when tracing is on).
        self._header_lines = render_headers({k: v for k, v in headers.items() if k.lower() != "x-request-id"})
        self._timeout = connect_timeout(deployment)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def models(self) -> list[str]:
        async with self._http.get(f"{self._base}/models", headers=self._headers, timeout=self._timeout) as resp:
            payload = await resp.json(loads=orjson.loads, content_type=None)
        return [m["id"] for m in payload.get("data", []) if isinstance(m, dict) and "id" in m]

    async def context_window(self) -> int | None:
        """The worker's window for this deployment's model, as vLLM lists it (``max_model_len`` in
        ``/models``); None when the backend does not say (OpenAI itself, most others)."""
        async with self._http.get(f"{self._base}/models", headers=self._headers, timeout=self._timeout) as resp:
            payload = await resp.json(loads=orjson.loads, content_type=None)
        for entry in payload.get("data", []) if isinstance(payload, dict) else []:
            if isinstance(entry, dict) and entry.get("id") == self.deployment.model:
                window = entry.get("max_model_len")
                return window if isinstance(window, int) and window > 0 else None
        return None

    async def chat(self, call: Call, ctx: RequestContext) -> Answer:
        return await self._send("/chat/completions", call, ctx)

    async def completions(self, call: Call, ctx: RequestContext) -> Answer:
        return await self._send("/completions", call, ctx)

    async def embeddings(self, call: Call, ctx: RequestContext) -> Answer:
        return await self._send("/embeddings", call, ctx)

    async def responses(self, call: Call, ctx: RequestContext) -> Answer:
        if self.options.responses != "native":
            raise not_served(call, self.deployment.name)
        return await self._send("/responses", call, ctx)

    async def _send(self, path: str, call: Call, ctx: RequestContext) -> Answer:
        body = dict(call.body)
        body["model"] = self.deployment.model
        strip_usage = False
        # A Responses stream always ends with its usage (response.completed); it has no stream_options.
        if call.stream and self.options.stream_usage and not call.include_usage and call.kind != "responses":
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
            strip_usage = True
        if ctx.upstream_headers:
            headers = render_headers({**self._headers, **ctx.upstream_headers, "x-request-id": ctx.request_id})
        else:  # the request id was checked on the way in (printable ASCII only)
            headers = b"%sx-request-id: %s\r\n" % (self._header_lines, ctx.request_id.encode())
        first_byte = min(self.deployment.timeouts.first_token, ctx.remaining() or float("inf"))
        resp: Response | None = None
        try:
            # A stream's wait is bounded up to its response head here (the stream writer bounds the
            # rest); a plain answer's, up to its last byte.
            resp = await self._upstream.post(self._endpoints[path], headers, orjson.dumps(body),
                                             connect_s=self.deployment.timeouts.connect, answer_s=first_byte,
                                             whole=not call.stream)
            if resp.status != 200:
                raise await _status_error(resp, self.deployment.name or "", self._secrets)
            if not call.stream:
                raw = await resp.read()
        except AnswerTimedOut:
            close_response(resp)
            raise UpstreamTimeout(
                f"The backend {self.deployment.name} sent nothing within {first_byte:.3g}s.", retry_after=1
            ) from None
        except BadResponse as exc:
            close_response(resp)
            raise UpstreamError(f"The backend {self.deployment.name} failed: {exc}.") from None
        except UpstreamHttpError as exc:  # no connection, or it broke before the answer was whole
            close_response(resp)
            raise UpstreamUnavailable(f"Could not reach the backend {self.deployment.name}: {exc}.") from None
        except BaseException:
            close_response(resp)
            raise
        name = self.deployment.name or ""
        if not call.stream:
            return _completion(raw, name, call.kind)
        if call.kind == "responses":
            return Stream(lambda stream: _relay_events(resp, stream, name))
        return Stream(lambda stream: _relay(resp, stream, strip_usage, name))


async def _status_error(resp: Response, name: str, secrets: list[bytes]) -> GatewayError:
    if resp.status in (401, 403):
        # The backend refused the gateway's own key: the operator's to fix, not the client's key (an SDK
        # raises AuthenticationError on a 401), and its answer may say the key back, whole or in part.
        return UpstreamError(f"The backend {name} refused the gateway's credentials (HTTP {resp.status}); the "
                             "operator should check the deployment's api_key_env.", upstream_status=resp.status)
    body = await resp.read()
    for secret in secrets:  # whatever else the backend says, it never relays the gateway's credentials
        body = body.replace(secret, b"[upstream key]")
    retry_after = _retry_after(resp.header(b"retry-after"))
    detail = body[:300].decode(errors="replace")
    if resp.status == 429 or resp.status >= 500:
        return UpstreamError(
            f"The backend answered {resp.status}: {detail}", upstream_status=resp.status, retry_after=retry_after
        )
    return UpstreamRejected(f"The backend answered {resp.status}: {detail}", status=resp.status, body=body)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date; rare from model servers, treated as absent


# What a finished answer of each kind must hold (the rest say ``choices``).
_CONTENT = {"embeddings": "data", "responses": "output"}


def _completion(raw: bytes, deployment: str, kind: str) -> Completion:
    """The relayed body, checked to be a JSON object with the content of its ``kind``."""
    content = _CONTENT.get(kind, "choices")
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"The backend {deployment} returned a body that is not JSON.") from None
    if not isinstance(parsed, dict) or content not in parsed:
        raise UpstreamError(f"The backend {deployment} returned JSON without '{content}'.")
    usage = parsed.get("usage")
    return Completion(body=raw, usage=Usage.from_responses(usage) if kind == "responses" else Usage.from_openai(usage))


async def _relay(
    resp: Response, stream: Stream, strip_usage: bool, deployment: str
) -> AsyncIterator[bytes]:
    """Forward each upstream read's whole events, framed canonically; note usage; drop the usage
    chunk if we added it."""
    decoder = SSEDecoder()
    done = False
    try:
        async for data in resp.chunks():
            block = decoder.feed(data)
            if b'"usage"' in block and _USAGE_OBJECT.search(block):
                block = _take_usage(block, stream, strip_usage)
            if not block:
                continue
            done = ends_stream(block)  # before the yield: the reader closes us once it has [DONE]
            yield block
            if done:
                return  # nothing follows [DONE]; a backend that holds the stream open must not hold us
    except UpstreamHttpError as exc:
        raise UpstreamError(f"The backend {deployment} broke off the stream: {exc}.") from None
    finally:
        resp.release() if done else resp.close()
    if not done:
        raise UpstreamError(f"The backend {deployment} ended the stream without [DONE].")


async def _relay_events(resp: Response, stream: Stream, deployment: str) -> AsyncIterator[bytes]:
    """Forward a Responses stream's whole events as they came (``event:`` lines kept); note the usage
    of the event that ends it. Responses streams end with that event, not with ``[DONE]``."""
    decoder = SSEDecoder(verbatim=True)
    done = False
    try:
        async for data in resp.chunks():
            block = decoder.feed(data)
            if not block:
                continue
            end = response_end(block)
            if end is not None:
                done = True
                response = end.get("response")
                if isinstance(response, dict):
                    stream.usage = Usage.from_responses(response.get("usage"))
            yield block
            if done:
                return
    except UpstreamHttpError as exc:
        raise UpstreamError(f"The backend {deployment} broke off the stream: {exc}.") from None
    finally:
        resp.release() if done else resp.close()
    if not done:
        raise UpstreamError(f"The backend {deployment} ended the stream before response.completed.")


# A chunk that reports usage, as opposed to the ``"usage": null`` that OpenAI puts in every other
# chunk of a stream that asked for usage: only such chunks are parsed.
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')


def _take_usage(block: bytes, stream: Stream, strip: bool) -> bytes:
    kept: list[bytes] = []
    for data in iter_sse_data(block):
        if _USAGE_OBJECT.search(data):
            try:
                chunk: Any = orjson.loads(data)
            except orjson.JSONDecodeError:
                chunk = None
            if isinstance(chunk, dict):
                usage = Usage.from_openai(chunk.get("usage"))
                if usage is not None:
                    stream.usage = usage
                    if strip and not chunk.get("choices"):
                        continue
        kept.append(data)
    return sse_events(kept)
