"""The issue's reference point: a bare pass-through in Python, no policies at all.

Raw ASGI on uvicorn (uvloop + httptools) with one aiohttp session: read the body, pick the
upstream by the "model" field, send it on, relay status and body (streams chunk by chunk as
they arrive). No auth, no limits, no usage, no metrics, no logs, no error mapping. It shows how
fast a Python gateway can be on this box, so tokenway's figure can be read against it in the
same run (run.sh starts it when BARE_PORT is set).

    python benchmarks/gateway_overhead/bare_passthrough.py --port 8001
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import orjson
import uvicorn

UPSTREAMS = {  # compare.sh's model names -> the fixed-reply upstream
    "mock-json": "http://127.0.0.1:9101/json/v1/chat/completions",
    "mock-sse": "http://127.0.0.1:9101/sse/v1/chat/completions",
}


class BarePassthrough:
    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        url = UPSTREAMS[orjson.loads(body)["model"]]
        assert self.session is not None
        async with self.session.post(url, data=body, headers={"content-type": "application/json"}) as upstream:
            headers = [(b"content-type", upstream.headers.get("content-type", "application/json").encode())]
            if upstream.content_type == "text/event-stream":
                await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
                async for chunk in upstream.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                data = await upstream.read()
                headers.append((b"content-length", b"%d" % len(data)))
                await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
                await send({"type": "http.response.body", "body": data})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(BarePassthrough(), host="127.0.0.1", port=args.port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
