"""What the HTTP providers (OpenAI-compatible, Ollama) share about talking to a backend."""

from __future__ import annotations

from typing import Protocol

import aiohttp

from tokenway.config import DeploymentConfig


class _Closable(Protocol):
    def close(self) -> None: ...


def connect_timeout(deployment: DeploymentConfig) -> aiohttp.ClientTimeout:
    """Only the connect limit: first-byte, idle and total limits are enforced by the gateway itself,
    which sees every call and every chunk anyway."""
    seconds = deployment.timeouts.connect
    return aiohttp.ClientTimeout(total=None, sock_connect=seconds, connect=seconds)


def close_response(resp: _Closable | None) -> None:
    """Drop a half-read answer's connection (it cannot be reused) after a failure."""
    if resp is not None:
        resp.close()
