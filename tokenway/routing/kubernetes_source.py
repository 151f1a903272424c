"""Workers from Kubernetes: a Service's ready endpoints, watched through the EndpointSlice API.

In a pod, the API server is ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`` and the
service account's token, CA and namespace are files under
``/var/run/secrets/kubernetes.io/serviceaccount``. The source lists the Service's EndpointSlices
(label ``kubernetes.io/service-name``), then watches from the list's ``resourceVersion``: a pod that
turns ready or not-ready, or goes away, is known within a round trip rather than a DNS interval. An
expired version (410 Gone) lists again; a dropped watch resumes from the last version seen; a
refused one (RBAC) is retried with backoff, and the workers known stay meanwhile. The token is read
again on every connection, as the kubelet rotates it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tokenway.observability.logging import JsonLog
from tokenway.routing.discovery import Address
from tokenway.routing.options import DiscoveryConfig

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_WATCH_S = 300  # the API server ends each watch after this; it is then resumed from the last version
_BACKOFF_MAX_S = 30.0
_WATCH_MIN_S = 1.0  # a watch that ends sooner than this counts as a failure (backoff)


class KubernetesError(RuntimeError):
    """The API server refused or broke a call; the message says which and what to check."""


@dataclass(frozen=True, slots=True)
class InCluster:
    """Where the API server is and how to prove who we are to it, from inside a pod."""

    server: str  # https://host:port
    token_file: Path
    ca_file: Path
    namespace: str | None  # the pod's own

    @classmethod
    def from_environment(cls, root: Path | None = None, environ: Mapping[str, str] | None = None) -> InCluster:
        root = root or SERVICE_ACCOUNT
        environ = os.environ if environ is None else environ
        host = environ.get("KUBERNETES_SERVICE_HOST")
        if not host or not (root / "token").is_file():
            raise KubernetesError(
                "kubernetes discovery works inside a pod: KUBERNETES_SERVICE_HOST is not set or "
                f"{root}/token is missing (automountServiceAccountToken: false?). Outside Kubernetes use "
                "'discovery: {dns: <name>, port: <port>}'."
            )
        port = environ.get("KUBERNETES_SERVICE_PORT", "443")
        namespace_file = root / "namespace"
        namespace = namespace_file.read_text().strip() if namespace_file.is_file() else None
        return cls(f"https://{f'[{host}]' if ':' in host else host}:{port}", root / "token", root / "ca.crt", namespace)

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token_file.read_text().strip()}", "accept": "application/json"}

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


class EndpointSliceSource:
    def __init__(self, discovery: DiscoveryConfig, cluster: InCluster, http: aiohttp.ClientSession,
                 log: JsonLog) -> None:
        service = discovery.kubernetes
        assert service is not None, "checked by DiscoveryConfig"
        namespace = service.namespace or cluster.namespace
        if namespace is None:
            raise KubernetesError(f"kubernetes discovery of {service.service!r}: no namespace given and none in "
                                  f"{cluster.token_file.parent}/namespace; set 'namespace:'")
        self._service = f"{namespace}/{service.service}"
        self._url = f"{cluster.server}/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
        self._selector = f"kubernetes.io/service-name={service.service}"
        self._port = discovery.port
        self._cluster = cluster
        self._http = http
        self._log = log
        self._ssl = cluster.ssl_context()
        self._slices: dict[str, frozenset[Address]] = {}  # slice name -> its ready workers
        self._warned: str | None = None

    async def watch(self) -> AsyncIterator[frozenset[Address]]:
        backoff = 1.0
        while True:
            try:
                version: str | None = await self._list()
                yield self._workers()
                while version is not None:  # None: our version expired, list again
                    opened, news = asyncio.get_running_loop().time(), False
                    async with contextlib.aclosing(self._events(version)) as events:
                        async for event in events:
                            news = True
                            version = self._apply(event, version)
                            if version is None:
                                break
                            if event.get("type") != "BOOKMARK":
                                yield self._workers()
                    if not news and asyncio.get_running_loop().time() - opened < _WATCH_MIN_S:
                        # a server that ends every watch at once must not be asked again in a tight loop
                        raise KubernetesError(f"the watch of {self._service} ended at once")
                    backoff = 1.0  # the server ended the watch (timeoutSeconds): resume from the version
            except (aiohttp.ClientError, TimeoutError, KubernetesError, ValueError) as exc:
                self._note(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(backoff)
                backoff = min(_BACKOFF_MAX_S, backoff * 2)

    async def _list(self) -> str:
        async with self._http.get(self._url, params={"labelSelector": self._selector}, ssl=self._ssl,
                                  headers=self._cluster.headers(),
                                  timeout=aiohttp.ClientTimeout(total=30)) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise KubernetesError(self._refusal("list", resp.status, body))
        listing = orjson.loads(body)
        self._slices = {item["metadata"]["name"]: self._ready(item) for item in listing.get("items") or []}
        if self._warned is not None:
            self._warned = None
            self._log.event("discovery_kubernetes_recovered", service=self._service)
        return str(listing["metadata"]["resourceVersion"])

    async def _events(self, version: str) -> AsyncGenerator[dict[str, Any], None]:
        params = {"labelSelector": self._selector, "watch": "1", "resourceVersion": version,
                  "allowWatchBookmarks": "true", "timeoutSeconds": str(_WATCH_S)}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=_WATCH_S + 30)
        async with self._http.get(self._url, params=params, ssl=self._ssl, headers=self._cluster.headers(),
                                  timeout=timeout) as resp:
            if resp.status != 200:
                raise KubernetesError(self._refusal("watch", resp.status, await resp.read()))
            pending = b""
            # One JSON object a line; a slice of many endpoints can be a long line, so no readline limit.
            async for chunk in resp.content.iter_any():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield orjson.loads(line)

    def _apply(self, event: dict[str, Any], version: str) -> str | None:
        """Fold one watch event into the slices; the version to resume from, None to list again."""
        kind = event.get("type")
        item = event.get("object") or {}
        if kind == "ERROR":
            if item.get("code") == 410:  # our version is older than the server keeps: start over
                return None
            raise KubernetesError(f"watch of {self._service}: {item.get('message') or item}")
        metadata = item.get("metadata") or {}
        if kind == "DELETED":
            self._slices.pop(metadata.get("name", ""), None)
        elif kind in ("ADDED", "MODIFIED"):
            self._slices[metadata["name"]] = self._ready(item)
        return str(metadata.get("resourceVersion") or version)

    def _workers(self) -> frozenset[Address]:
        return frozenset().union(*self._slices.values())

    def _ready(self, item: dict[str, Any]) -> frozenset[Address]:
        """The slice's endpoints that are ready (an absent condition means ready, as the API says)."""
        if item.get("addressType") not in ("IPv4", "IPv6"):
            return frozenset()  # FQDN slices name hosts, not addresses
        port = self._pick_port(item.get("ports") or [])
        if port is None:
            return frozenset()
        return frozenset(
            Address(address, port)
            for endpoint in item.get("endpoints") or []
            if (endpoint.get("conditions") or {}).get("ready") is not False
            for address in endpoint.get("addresses") or []
        )

    def _pick_port(self, ports: list[dict[str, Any]]) -> int | None:
        wanted = self._port
        if isinstance(wanted, int):
            return wanted
        if wanted is None and len(ports) == 1:
            return int(ports[0]["port"])
        for port in ports:
            if wanted is not None and port.get("name") == wanted:
                return int(port["port"])
        names = [p.get("name") for p in ports]
        self._note(f"no port to use among {names}: set 'port:' to one of the Service's port names or a number")
        return None

    def _refusal(self, verb: str, status: int, body: bytes) -> str:
        hint = (" (the pod's service account needs get, list and watch on endpointslices.discovery.k8s.io: "
                "a Role and RoleBinding)") if status in (401, 403) else ""
        return f"{verb} endpointslices of {self._service}: HTTP {status}{hint}: {body[:300].decode(errors='replace')}"

    def _note(self, problem: str) -> None:
        if problem != self._warned:  # once per kind of problem, not on every retry
            self._log.event("discovery_kubernetes_failed", level="warning", service=self._service, error=problem)
        self._warned = problem
