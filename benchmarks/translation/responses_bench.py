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

import sys
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for tests.inprocess
sys.path.insert(0, str(Path(__file__).resolve().parent))  # messages_bench, the harness

from messages_bench import QUESTION, SYSTEM, TOOL_SCHEMA, run


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


if __name__ == "__main__":
    run("responses", b"response.completed", bodies, __doc__ or "")
