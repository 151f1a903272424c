"""Run a real tokenway server (uvicorn, real socket, random port) in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tokenway.app import Gateway, create_app
from tokenway.config import Settings, parse_config
from tokenway.http_protocol import server_options


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_gateway(
    config_yaml: str, *, master_key: str | None = None, wait_ready: bool = True, http: Any = None
) -> Iterator[str]:
    """Yield the gateway's base URL (``http://127.0.0.1:PORT``) while it serves ``config_yaml``.

    ``http``: uvicorn's HTTP protocol; by default the one ``tokenway serve`` runs."""
    with running_app(config_yaml, master_key=master_key, wait_ready=wait_ready, http=http) as (base, _):
        yield base


@contextmanager
def running_app(
    config_yaml: str, *, master_key: str | None = None, wait_ready: bool = True, http: Any = None,
    **settings: Any
) -> Iterator[tuple[str, Gateway]]:
    """Like ``running_gateway``, and also yield the app object itself; ``settings`` are more ``Settings``."""
    port = free_port()
    app = create_app(
        Settings(host="127.0.0.1", port=port, master_key=master_key, **settings), parse_config(config_yaml)
    )
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="on", log_level="warning",
        **{**server_options(app.config.limits), **({"http": http} if http is not None else {})},
    ))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    path = "/ready" if wait_ready else "/health"
    while True:
        try:
            if httpx.get(base + path, timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.time() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError(f"gateway did not come up on {base}")
        time.sleep(0.02)
    try:
        yield base, app
    finally:
        server.should_exit = True
        thread.join(15)


def wait_until_ready(base: str, timeout: float = 30.0, alive: Callable[[], bool] = lambda: True) -> None:
    """Poll ``/ready`` until it answers 200; give up early once ``alive()`` says the server died."""
    deadline = time.time() + timeout
    while time.time() < deadline and alive():
        try:
            if httpx.get(base + "/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{base} did not become ready within {timeout:.0f}s")


def write_config(tmp: Path, text: str) -> Path:
    path = tmp / "tokenway.yaml"
    path.write_text(text)
    return path


@contextmanager
def serving_workers(config_yaml: str, tmp: Path, workers: int = 2, **env: str) -> Iterator[str]:
    """``tokenway serve --workers N`` as a child process (real worker processes, shared Redis counters);
    yield its base URL once ready, SIGTERM it after. ``env``: more ``TOKENWAY_*`` variables."""
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    variables = {**os.environ, "TOKENWAY_PORT": str(port), "TOKENWAY_CONFIG": str(write_config(tmp, config_yaml)),
                 "TOKENWAY_WORKERS": str(workers), "TOKENWAY_REDIS_URL": "redis://127.0.0.1:6379/0", **env}
    variables.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the server makes its own
    proc = subprocess.Popen([sys.executable, "-m", "tokenway", "serve"], env=variables,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, alive=lambda: proc.poll() is None)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
