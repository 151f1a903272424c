"""Fakes for worker discovery, each a real server on loopback: a DNS server whose records the test
changes, and OpenAI-compatible workers that can share one port on different 127.0.0.x addresses (as
the pods behind a headless Service do)."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from ipaddress import ip_address

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from aiohttp import web

WORDS = ["Hello", " from", " a", " discovered", " worker", "."]


class AppThread:
    """An aiohttp app served on ``host:port`` (0: any free port) from its own thread and event loop."""

    def __init__(self, app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.2)

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class DnsServer:
    """A UDP DNS server on 127.0.0.1: A and AAAA answers from ``records``; NXDOMAIN for other names."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        self._records: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.queries = 0
        self.silent = False  # True: questions go unanswered (the resolver times out)

    def set(self, name: str, addresses: list[str]) -> None:
        with self._lock:
            self._records[name.rstrip(".").lower() + "."] = list(addresses)

    def forget(self, name: str) -> None:
        """The name no longer exists: NXDOMAIN."""
        with self._lock:
            self._records.pop(name.rstrip(".").lower() + ".", None)

    def start(self) -> DnsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            if self.silent:
                continue
            query = dns.message.from_wire(wire)
            self._sock.sendto(self._answer(query).to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        self.queries += 1
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        with self._lock:
            addresses = self._records.get(question.name.to_text().lower())
        if addresses is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        version = 4 if question.rdtype == dns.rdatatype.A else 6
        wanted = [a for a in addresses if ip_address(a).version == version]
        if wanted:
            kind = "A" if version == 4 else "AAAA"
            response.answer.append(dns.rrset.from_text_list(question.name, 1, dns.rdataclass.IN, kind, wanted))
        return response


@dataclass
class Worker:
    """An OpenAI-compatible worker at ``host:port``: lists ``models``, answers chat (JSON or SSE)."""

    host: str
    port: int
    models: list[str] = field(default_factory=lambda: ["served-model"])
    chunk_delay: float = 0.01
    started: int = 0  # chat calls received
    active: int = 0  # chat calls being answered now
    finished: int = 0

    def start(self) -> Worker:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._server = AppThread(app, self.host, self.port)
        return self

    def stop(self) -> None:
        self._server.stop()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.started += 1
        self.active += 1
        try:
            if not body.get("stream"):
                await asyncio.sleep(self.chunk_delay)
                return web.json_response({
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(WORDS)},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": len(WORDS), "total_tokens": 3 + len(WORDS)},
                })
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for i, word in enumerate(WORDS):
                chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                         "choices": [{"index": 0, "delta": {"content": word},
                                      "finish_reason": "stop" if i == len(WORDS) - 1 else None}]}
                await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                await asyncio.sleep(self.chunk_delay)
            await response.write(b"data: [DONE]\n\n")
            return response
        finally:
            self.active -= 1
            self.finished += 1


class FakeKubernetes:
    """A Kubernetes API server that knows EndpointSlices, over TLS on 127.0.0.1: list, and watch as a
    stream of JSON lines. The test changes slices with ``apply`` (watchers get the event), and can
    expire the watchers' version (``expire``: an ERROR 410, after which a client must list again)."""

    def __init__(self, tls: tuple[str, str], token: str, namespace: str) -> None:
        self._tls = tls  # (certificate, key) files
        self._token = token
        self._path = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
        self.slices: dict[str, dict[str, object]] = {}
        self.version = 100
        self.lists = 0
        self.watches = 0
        self.refused = 0
        self.end_watches_at_once = False  # a broken API server or proxy: every watch closes with nothing
        self._watchers: list[asyncio.Queue[dict[str, object] | None]] = []

    def start(self) -> FakeKubernetes:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*self._tls)
        app = web.Application()
        app.router.add_get(self._path, self._endpointslices)
        self._server = AppThread(app, "127.0.0.1", 0, context)
        self._loop = self._server.loop
        self.port = self._server.port
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._send, None)  # end the watches, or cleanup waits for them
        self._server.stop()

    @property
    def watching(self) -> int:
        return len(self._watchers)

    def apply(self, kind: str, item: dict[str, object]) -> None:
        """ADDED, MODIFIED or DELETED: change the slice and tell every watcher."""
        self._loop.call_soon_threadsafe(self._apply, kind, item)

    def expire(self) -> None:
        self._loop.call_soon_threadsafe(self._send, {"type": "ERROR", "object": {
            "kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}})

    def _apply(self, kind: str, item: dict[str, object]) -> None:
        self.version += 1
        metadata = item.setdefault("metadata", {})
        assert isinstance(metadata, dict)
        metadata["resourceVersion"] = str(self.version)
        if kind == "DELETED":
            self.slices.pop(metadata["name"], None)
        else:
            self.slices[metadata["name"]] = item
        self._send({"type": kind, "object": item})

    def _send(self, event: dict[str, object] | None) -> None:
        for queue in self._watchers:
            queue.put_nowait(event)

    async def _endpointslices(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("authorization") != f"Bearer {self._token}":
            self.refused += 1
            return web.json_response({"kind": "Status", "code": 401, "message": "Unauthorized"}, status=401)
        assert request.query["labelSelector"] == "kubernetes.io/service-name=vllm"
        if request.query.get("watch") != "1":
            self.lists += 1
            return web.json_response({"kind": "EndpointSliceList", "metadata": {"resourceVersion": str(self.version)},
                                      "items": list(self.slices.values())})
        self.watches += 1
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if self.end_watches_at_once:
            return response
        queue: asyncio.Queue[dict[str, object] | None] = asyncio.Queue()
        self._watchers.append(queue)
        try:
            while (event := await queue.get()) is not None:
                await response.write(json.dumps(event).encode() + b"\n")
                if event["type"] == "ERROR":
                    break
        finally:
            self._watchers.remove(queue)
        return response


def endpoint_slice(name: str, port: int, ready: dict[str, bool]) -> dict[str, object]:
    """An EndpointSlice of the Service ``vllm``: one endpoint per address, ready or not."""
    return {
        "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "addressType": "IPv4",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "vllm"}},
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": is_ready, "serving": True,
                                                              "terminating": not is_ready}}
                      for address, is_ready in ready.items()],
    }
