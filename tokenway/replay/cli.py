"""``tokenway replay ID [--model OTHER]``: send a recorded request again and set the two side by side.

It fetches the record (``GET /admin/requests/{id}``, master key), sends its request to the same
gateway as a new request (not streamed, so the whole answer and its usage come back in one body;
``--model`` sends it to another model), then fetches the replay's own record: a master-key request
whose id starts with ``replay_`` is always recorded. The table shows, for each side, who answered,
the output, tokens, latency and cost.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from typing import Any

import orjson

from tokenway.jobs.cli import CommandError, _Client, _table
from tokenway.replay.recorder import REPLAY_PREFIX

_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "responses": "/v1/responses"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenway replay",
                                     description="Send a recorded request again; compare it with the original.")
    parser.add_argument("id", help="the recorded request's id (its x-request-id)")
    parser.add_argument("--model", help="send it to this model instead of the one it named")
    parser.add_argument("--base-url", default=os.environ.get("TOKENWAY_BASE_URL", "http://127.0.0.1:8000"),
                        help="the gateway (env TOKENWAY_BASE_URL; default %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("TOKENWAY_MASTER_KEY"),
                        help="the gateway's master key (env TOKENWAY_MASTER_KEY)")
    parser.add_argument("--json", action="store_true", help="print both records as JSON instead of a table")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        with _Client(args.base_url, args.api_key) as client:
            original = client.call("GET", f"/admin/requests/{args.id}")
            replayed = replay(client, original, args.model)
    except CommandError as exc:
        print(f"tokenway replay: {exc}", file=sys.stderr)
        return exc.code
    if args.json:
        print(orjson.dumps({"original": original, "replay": replayed}, option=orjson.OPT_INDENT_2).decode())
        return 0
    _table(["", "original", "replay"], [[name, show(original), show(replayed)] for name, show in _ROWS])
    return 0


def replay(client: _Client, original: dict[str, Any], model: str | None) -> dict[str, Any]:
    """Send ``original``'s request again; the replay's own record."""
    body = {k: v for k, v in original["request"].items() if k not in ("stream", "stream_options")}
    if model:
        body["model"] = model
    request_id = REPLAY_PREFIX + secrets.token_hex(8)
    client.call("POST", _PATHS[original["kind"]], content=orjson.dumps(body),
                headers={"content-type": "application/json", "x-request-id": request_id})
    deadline = time.monotonic() + 5  # the record is queued as the answer ends: give it a moment
    while True:
        try:
            return dict(client.call("GET", f"/admin/requests/{request_id}"))
        except CommandError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _output(record: dict[str, Any]) -> str:
    body = record["response"]["body"] or {}
    choices = body.get("choices") or [{}]
    first = choices[0]
    text = (first.get("message") or {}).get("content") if "message" in first else first.get("text")
    if text is None:
        text = body.get("stream_text") or record["response"].get("error_type") or ""
    return str(text)


def _usage(name: str) -> Any:
    return lambda record: (record.get("usage") or {}).get(name)


_ROWS = [
    ("model", lambda r: r["routing"]["answered_by"]["model"]),
    ("deployment", lambda r: r["routing"]["answered_by"]["deployment"]),
    ("status", lambda r: r["response"]["status"]),
    ("output", _output),
    ("prompt tokens", _usage("prompt_tokens")),
    ("completion tokens", _usage("completion_tokens")),
    ("latency ms", lambda r: r["timings"]["latency_ms"]),
    ("cost usd", lambda r: None if r.get("cost_usd") is None else f"{r['cost_usd']:.6f}"),
    ("attempts", lambda r: len(r["routing"]["attempts"])),
]
