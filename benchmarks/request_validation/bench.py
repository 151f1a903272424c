"""parse_body's cost per request: this tree against another commit, in one process, interleaved.

    .venv/bin/python benchmarks/request_validation/bench.py [--against COMMIT] [--rounds 7]

Each body is parsed by this tree's ``tokenway.protocol.parse_body`` and by the one in
``tokenway/protocol.py`` at ``COMMIT`` (default ``HEAD``; loaded from ``git show`` into a module of
its own; a commit from before the request schemas moved to ``request_schema.py``), alternating
rounds, so the two share the box's load. Prints the median µs per call of each, their ratio, and
the parts of this tree's cost; RESULTS.md records a run.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import orjson
from pydantic import TypeAdapter

import tokenway.protocol as current
from tokenway import request_schema

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = ("model", "messages")

SYSTEM = "You are a helpful assistant for an online bookshop. Answer briefly and politely; cite the order number."
QUESTION = ("Hi, I ordered two paperbacks last Tuesday (order 48213) and the tracking page still says "
            "'label created'. Could you check whether it has shipped, and if not, whether I can still add "
            "a third book to the same parcel? ")

BODIES: dict[str, bytes] = {
    # 1 KB: a system prompt, three turns, the usual sampling fields.
    "chat 1 KB": orjson.dumps({
        "model": "m", "temperature": 0.7, "max_tokens": 256, "stream": True,
        "stream_options": {"include_usage": True}, "user": "user-1234",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": "Order 48213 has not shipped yet: it is packed and leaves the warehouse "
                                             "tomorrow morning. You can still add a book today until 6 pm."},
            {"role": "user", "content": QUESTION[:300]},
        ],
    }),
    # ~1 KB with content parts, a tool and a tool round trip.
    "chat 1 KB, parts + tools": orjson.dumps({
        "model": "m", "temperature": 0.2, "max_completion_tokens": 256, "tool_choice": "auto",
        "tools": [{"type": "function", "function": {
            "name": "order_status", "description": "Look up an order",
            "parameters": {"type": "object", "properties": {"order": {"type": "string"}}}}}],
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": [{"type": "text", "text": QUESTION},
                                         {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                "name": "order_status", "arguments": "{\"order\": \"48213\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "label created"},
        ],
    }),
}


def load_protocol_at(commit: str) -> ModuleType:
    source = subprocess.run(["git", "show", f"{commit}:tokenway/protocol.py"], cwd=ROOT, check=True,
                            capture_output=True).stdout
    with tempfile.NamedTemporaryFile("wb", suffix=".py", delete=False) as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(f"protocol_at_{commit}", f.name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the TypedDicts' annotations through it
    spec.loader.exec_module(module)
    return module


def per_call_us(run: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - started) / calls * 1e6


def stages(other: ModuleType, body: bytes) -> dict[str, Callable[[], object]]:
    """parse_body then and now, and the parts of now: the pydantic pass alone (no rules between
    fields), the rules between fields alone, and the scan for numbers past 64 bits."""
    schema_only = TypeAdapter(request_schema.ChatCompletionRequest)
    parsed = current.parse_body(current.CHAT_REQUEST, body, REQUIRED)
    return {
        "then": lambda: other.parse_body(other.CHAT_REQUEST, body, REQUIRED),
        "now": lambda: current.parse_body(current.CHAT_REQUEST, body, REQUIRED),
        "schema": lambda: schema_only.validate_json(body),
        "rules": lambda: request_schema._chat_rules(parsed),
        "scan": lambda: request_schema._TWENTY_DIGITS in body.translate(request_schema._DIGITS_AS_ZEROS),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="HEAD", help="the commit to compare with (default HEAD)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20_000, help="calls per round")
    args = parser.parse_args()
    other = load_protocol_at(args.against)
    print(f"parse_body, median µs per call of {args.rounds} rounds x {args.calls} calls, "
          f"then = {args.against}, now = this tree (schema + rules + scan = its parts)")
    print(f"{'body':<28}{'bytes':>7}{'then':>8}{'now':>8}{'ratio':>7}{'schema':>8}{'rules':>7}{'scan':>7}")
    for name, body in BODIES.items():
        runs = stages(other, body)
        times: dict[str, list[float]] = {stage: [] for stage in runs}
        for _ in range(args.rounds):
            for stage, run in runs.items():
                times[stage].append(per_call_us(run, args.calls))
        m = {stage: statistics.median(values) for stage, values in times.items()}
        print(f"{name:<28}{len(body):>7}{m['then']:>8.2f}{m['now']:>8.2f}{m['now'] / m['then']:>7.2f}"
              f"{m['schema']:>8.2f}{m['rules']:>7.2f}{m['scan']:>7.2f}")


if __name__ == "__main__":
    main()
