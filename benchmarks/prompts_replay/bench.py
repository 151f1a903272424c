"""What the prompts policy and the recorder cost per request, in process (no sockets, no database).

Each case calls one policy around a handler that returns a fixed answer, many times on one event
loop, beside the same handler called bare; the difference is the policy's cost. Best of --rounds.

    PYTHONPATH=. .venv/bin/python benchmarks/prompts_replay/bench.py --rounds 7
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tokenway.config import parse_config
from tokenway.context import RequestContext
from tokenway.observability.logging import JsonLog
from tokenway.observability.metrics import Metrics
from tokenway.prompts.book import PromptEvent
from tokenway.prompts.policy import ApplyPrompt
from tokenway.prompts.service import Prompts
from tokenway.prompts.store import SqlitePromptStore
from tokenway.providers.base import Answer, Call, Completion
from tokenway.replay.options import RecordConfig
from tokenway.replay.recorder import Recorder
from tokenway.replay.store import SqliteRecordStore

ANSWER = Completion(body=b'{"choices": [{"message": {"content": "ok"}}]}')
CALLS = 20_000
CONFIG = parse_config("models:\n  - name: m\n    deployments:\n      - provider: openai\n        api_base: http://x/v1\n")
MESSAGES = [{"role": "user", "content": "What is the refund window for annual plans?"}]


async def answer(ctx: RequestContext, call: Call) -> Answer:
    return ANSWER


Case = Callable[[RequestContext, Call], Awaitable[Answer]]


async def per_call(case: Case, body: dict[str, object]) -> float:
    started = time.perf_counter()
    for _ in range(CALLS):
        await case(RequestContext("req", "chat"), Call("chat", dict(body)))
    return (time.perf_counter() - started) / CALLS * 1e6


async def main(rounds: int) -> None:
    prompts = Prompts(SqlitePromptStore(Path("/nonexistent")), JsonLog(level="error"))
    prompts.book.apply([
        PromptEvent(1, "support", 1, "create", '{"system": "You support {{product}}. Be {{tone}}."}', 0.0),
        PromptEvent(2, "support", 1, "activate", None, 0.0)])
    policy = ApplyPrompt(prompts, CONFIG, Metrics())
    recorder = Recorder(RecordConfig(models=["other"]), SqliteRecordStore(Path("/nonexistent")), JsonLog())
    recording = Recorder(RecordConfig(models=["m"]), SqliteRecordStore(Path("/nonexistent")), JsonLog())
    plain = {"model": "m", "messages": MESSAGES}
    with_prompt = {**plain, "prompt": {"id": "support", "variables": {"product": "tokenway", "tone": "brief"}}}
    cases: dict[str, tuple[Case, dict[str, object]]] = {
        "bare handler (baseline)": (answer, plain),
        "prompts policy, request without a prompt": (lambda c, k: policy(c, k, answer), plain),
        "prompts policy, request naming a prompt (2 variables)": (lambda c, k: policy(c, k, answer), with_prompt),
        "recorder.front, request not chosen": (lambda c, k: recorder.front(c, k, answer), plain),
        "recorder.attempts, request not recorded": (lambda c, k: recorder.attempts(c, k, answer), plain),
        "recorder.front, request chosen (body redacted, answer kept; the write is not here)":
            (lambda c, k: recording.front(c, k, answer), plain),
    }
    # Rounds interleave the cases, so a burst of load on the shared box hits all of them alike.
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (case, body) in cases.items():
            times[name].append(await per_call(case, body))
    best = {name: min(values) for name, values in times.items()}
    base = best["bare handler (baseline)"]
    print("| case | µs per call | over the bare handler |")
    print("|------|------------:|----------------------:|")
    for name, micros in best.items():
        print(f"| {name} | {micros:.2f} | {micros - base:+.2f} µs |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    asyncio.run(main(parser.parse_args().rounds))
