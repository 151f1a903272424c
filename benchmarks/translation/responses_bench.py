"""What OpenAI's Responses front door costs: gateway CPU per request for ``/v1/responses`` against plain
``/v1/chat/completions`` pass-through, the same conversation, JSON and streamed, in one run.

    .venv/bin/python benchmarks/translation/responses_bench.py [--rounds 30] [--requests 60] [--chunks 60] \
        [--backend scripted|relayed]

The same harness as ``messages_bench.py`` (the real gateway in process, driven straight through ASGI,
``time.process_time`` per request, variants in turns, best round each): only the bodies differ. Every
Responses call is stored (``store`` defaults to true), so the store's write is in the figure.
Results: RESULTS.md beside this file.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for tests.inprocess
sys.path.insert(0, str(Path(__file__).resolve().parent))  # messages_bench, the harness

from messages_bench import QUESTION, SYSTEM, TOOL_SCHEMA, call, cpu_per_request, relayed, relaying, scripted


def bodies(stream: bool) -> dict[str, tuple[str, bytes]]:
    """The same conversation (instructions, a question, one tool) as each front door takes it."""
    chat: dict[str, Any] = {
        "model": "m", "max_tokens": 200,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        "tools": [{"type": "function", "function": {"name": "search_docs", "description": "Search the docs.",
                                                    "parameters": TOOL_SCHEMA}}]}
    responses: dict[str, Any] = {
        "model": "m", "max_output_tokens": 200, "instructions": SYSTEM, "input": QUESTION,
        "tools": [{"type": "function", "name": "search_docs", "description": "Search the docs.",
                   "parameters": TOOL_SCHEMA}]}
    if stream:
        chat.update(stream=True, stream_options={"include_usage": True})
        responses["stream"] = True
    return {"chat": ("/v1/chat/completions", orjson.dumps(chat)),
            "responses": ("/v1/responses", orjson.dumps(responses))}


async def main(rounds: int, requests: int, pieces: tuple[str, ...], relay: str | None) -> None:
    """``relay``: the config of a relayed backend (``messages_bench.relaying``); None: the scripted provider."""
    async with (scripted(pieces) if relay is None else relayed(relay)) as app:
        variants = {f"{door} {mode}": target for mode in ("json", "stream")
                    for door, target in bodies(mode == "stream").items()}
        for path, body in variants.values():  # warm up, and check each answers in its own format
            answer = await call(app, path, body)
            streamed = b'"stream":true' in body
            assert (b"response.completed" if path == "/v1/responses" and streamed else b"word") in answer, answer
        best = dict.fromkeys(variants, float("inf"))
        for _ in range(rounds):
            for name, (path, body) in variants.items():
                best[name] = min(best[name], await cpu_per_request(app, path, body, requests))
    backend = "scripted" if relay is None else "relayed"
    print(f"{backend} backend: {rounds} rounds x {requests} requests per variant, streams of {len(pieces)} chunks; "
          "best round, CPU per request")
    for name, seconds in best.items():
        print(f"  {name:16s} {seconds * 1e6:8.1f} us")
    for mode in ("json", "stream"):
        ratio = best[f"responses {mode}"] / best[f"chat {mode}"]
        print(f"  /v1/responses vs chat, {mode}: {ratio:.3f} ({(ratio - 1) * 100:+.1f}% CPU)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--chunks", type=int, default=60)
    parser.add_argument("--backend", choices=["scripted", "relayed"], default="scripted")
    args = parser.parse_args()
    words = tuple(f" word{i:02d}" for i in range(args.chunks))
    if args.backend == "scripted":
        asyncio.run(main(args.rounds, args.requests, words, None))
    else:
        with relaying(words) as relay_config:
            asyncio.run(main(args.rounds, args.requests, words, relay_config))
