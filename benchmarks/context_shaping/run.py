"""Context shaping on a multi-turn sample: prompt tokens saved and time added, per strategy.

Every conversation of ``conversations.jsonl`` is replayed as its user sends it: one request at each user
turn, carrying the whole history so far (a 30-turn conversation is 30 requests, each longer than the
last). Each request goes through the ``ContextWindow`` policy, in process, in front of a backend that
answers at once; so the time measured is the policy's own (counting, trimming, the summary cache).

- ``reject`` / ``trim`` / ``summarize``: a model with ``window`` tokens (default 4096) and the default
  ``output_reserve`` (256). Summaries come from a stand-in model that answers at once with a summary of
  ``--summary-tokens`` tokens: it counts the calls and what they read, not the model's time.
- ``--local-summarizer N``: also time N real summaries written by the embedded SmolLM2 on this CPU.

    python benchmarks/context_shaping/run.py [--window 4096] [--counter tiktoken|estimate] [--local-summarizer 3]

Prints a table and writes ``tokens.svg`` (tokens sent against the conversation's length) beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import time
from pathlib import Path
from typing import Any

import orjson

from tokenway.config import GatewayConfig
from tokenway.context import RequestContext
from tokenway.deployments import ModelTable
from tokenway.errors import GatewayError
from tokenway.observability.logging import JsonLog
from tokenway.observability.metrics import Metrics
from tokenway.plots import scatter_chart
from tokenway.policies.context_window import ContextWindow, counter_for
from tokenway.providers.base import Answer, Call, Completion
from tokenway.shaping.counting import tiktoken_counter

HERE = Path(__file__).parent
FILLER = "The user and the assistant discussed the problem, the numbers and the options in detail. "


def requests() -> list[tuple[str, list[dict[str, Any]]]]:
    """(conversation id, messages) for every user turn of every conversation: the history up to that turn."""
    out = []
    for line in (HERE / "conversations.jsonl").read_text().splitlines():
        conversation = json.loads(line)
        messages = conversation["messages"]
        for i, message in enumerate(messages):
            if message["role"] == "user":
                out.append((conversation["id"], messages[: i + 1]))
    return out


def config(strategy: str, window: int, upstream_model: str, summary_tokens: int) -> GatewayConfig:
    chat: dict[str, Any] = {"window": window, "strategy": strategy}
    if strategy == "summarize":
        chat.update(summarizer="small", summary_max_tokens=summary_tokens)
    return GatewayConfig.model_validate({"models": [
        {"name": "chat", "deployments": [{"provider": "openai", "api_base": "http://127.0.0.1:9/v1",
                                          "model": upstream_model}], "context": chat},
        {"name": "small", "deployments": [{"provider": "openai", "api_base": "http://127.0.0.1:9/v1"}]},
    ]})


class Backend:
    """The model behind the policy: records what it was sent (counted afterwards, off the clock) and answers
    at once."""

    def __init__(self, summary_tokens: int) -> None:
        self.sent_messages: list[list[dict[str, Any]]] = []
        self.summarised: list[list[dict[str, Any]]] = []
        words = FILLER * (summary_tokens // 12 + 1)
        self.summary = words[: int(summary_tokens * 3.5)]  # ~summary_tokens tokens of English

    async def __call__(self, ctx: RequestContext, call: Call) -> Answer:
        if call.body["model"] == "small":
            self.summarised.append(call.body["messages"])
            text = self.summary
        else:
            self.sent_messages.append(call.body["messages"])
            text = "ok"
        body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
        return Completion(orjson.dumps(body))


async def replay(strategy: str, args: argparse.Namespace, sample: list[tuple[str, list[dict[str, Any]]]]
                 ) -> dict[str, Any]:
    upstream = "gpt-4" if args.counter == "tiktoken" else "upstream-model"
    gateway_config = config(strategy, args.window, upstream, args.summary_tokens)
    policy = ContextWindow(gateway_config, ModelTable({"chat": [], "small": []}), JsonLog(io.BytesIO()), Metrics())
    counter = counter_for(gateway_config.models[0], [])
    backend = Backend(args.summary_tokens)
    policy.bind(backend)
    before, after, fits_us, shaped_us, made_us = [], [], [], [], []
    rejected = 0
    for i, (_, messages) in enumerate(sample):
        ctx = RequestContext(request_id=f"r{i}", endpoint="chat")
        call = Call("chat", {"model": "chat", "messages": messages})
        calls_before, sent_before = len(backend.summarised), len(backend.sent_messages)
        started = time.thread_time_ns()
        try:
            await policy(ctx, call, backend)
        except GatewayError:
            rejected += 1
        spent_us = (time.thread_time_ns() - started) / 1000  # CPU time: the box is shared
        tokens = counter.prompt_tokens(messages)
        before.append(tokens)
        answered = len(backend.sent_messages) > sent_before
        after.append(counter.prompt_tokens(backend.sent_messages[-1]) if answered else 0)
        if ctx.context_shaped is None:
            fits_us.append(spent_us)
        elif len(backend.summarised) > calls_before:
            made_us.append(spent_us)
        else:
            shaped_us.append(spent_us)
    return {"strategy": strategy, "before": before, "after": after, "rejected": rejected, "fits_us": fits_us,
            "shaped_us": shaped_us, "made_us": made_us, "summary_calls": len(backend.summarised),
            "summary_input_tokens": sum(counter.prompt_tokens(m) for m in backend.summarised), "counter": counter.name,
            "over_by_cl100k": over_by_cl100k(backend.sent_messages, args.window - 256)}


def over_by_cl100k(sent: list[list[dict[str, Any]]], budget: int) -> int | None:
    """How many of the prompts sent are still over the budget by OpenAI's cl100k count (None without tiktoken):
    what an estimate that counts too few lets through."""
    cl100k = tiktoken_counter("gpt-4")
    return None if cl100k is None else sum(1 for messages in sent if cl100k.prompt_tokens(messages) > budget)


def quantiles(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"{statistics.median(ordered):,.0f} / {p95:,.0f} µs"


async def local_summaries(count: int, sample: list[tuple[str, list[dict[str, Any]]]], summary_tokens: int) -> None:
    """Seconds per summary written by the embedded model (SmolLM2 on llama.cpp, this CPU)."""
    from tokenway.config import DeploymentConfig
    from tokenway.providers.local.provider import LocalProvider
    from tokenway.shaping.summaries import INSTRUCTIONS, transcript

    deployment = DeploymentConfig.model_validate({"provider": "local", "model": "small", "context_window": 8192,
                                                  "slots": 1, "warmup": False})
    provider = LocalProvider(deployment, deployment.options, resources=None)  # type: ignore[arg-type]
    await provider.start()
    try:
        picked = [messages for _, messages in sample if 2000 < sum(len(str(m.get("content"))) for m in messages) < 9000]
        for messages in picked[:count]:
            older = messages[1:-1]
            call = Call("chat", {"model": "small", "max_tokens": summary_tokens, "temperature": 0, "messages": [
                {"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": transcript(older)}]})
            started = time.perf_counter()
            answer = await provider.chat(call, RequestContext(request_id="s", endpoint="chat"))
            assert isinstance(answer, Completion) and answer.usage is not None
            print(f"local summary: {answer.usage.prompt_tokens} tokens read, {answer.usage.completion_tokens} "
                  f"written, {time.perf_counter() - started:.1f} s")
    finally:
        await provider.aclose()


def chart(results: list[dict[str, Any]], window: int) -> str:
    series = []
    for result in results:
        pairs = sorted(zip(result["before"], result["after"], strict=True))
        if result["strategy"] == "reject":
            series.append(("sent as is (reject: 0 when over)", [float(b) for b, _ in pairs],
                           [float(a) for _, a in pairs]))
        else:
            series.append((result["strategy"], [float(b) for b, _ in pairs], [float(a) for _, a in pairs]))
    return scatter_chart(series, f"Prompt tokens sent, window {window}", "conversation so far (tokens)",
                         "tokens sent to the model", ymin=0)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=int, default=4096)
    parser.add_argument("--counter", choices=["tiktoken", "estimate"], default="tiktoken")
    parser.add_argument("--summary-tokens", type=int, default=300)
    parser.add_argument("--local-summarizer", type=int, default=0, metavar="N")
    args = parser.parse_args()
    sample = requests()
    results = [await replay(strategy, args, sample) for strategy in ("reject", "trim", "summarize")]
    total = sum(results[0]["before"])
    over = sum(1 for t in results[0]["before"] if t > args.window - 256)
    print(f"{len(sample)} requests from 40 conversations, {total:,} prompt tokens in all, {over} over the window "
          f"({args.window} - 256 reserved); counted by {results[0]['counter']}")
    print("| strategy | requests answered | prompt tokens sent | saved | summariser calls (tokens read) "
          "| policy time, fits (median / p95) | shaped | shaped, summary made | sent over by cl100k |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        sent = sum(r["after"])
        saved = f"{1 - sent / total:.0%}" if not r["rejected"] else f"- ({r['rejected']} failed)"
        print(f"| {r['strategy']} | {len(sample) - r['rejected']} of {len(sample)} | {sent:,} | {saved} "
              f"| {r['summary_calls']} ({r['summary_input_tokens']:,}) | {quantiles(r['fits_us'])} "
              f"| {quantiles(r['shaped_us'])} | {quantiles(r['made_us'])} | {r['over_by_cl100k']} |")
    (HERE / "tokens.svg").write_text(chart(results, args.window))
    if args.local_summarizer:
        await local_summaries(args.local_summarizer, sample, args.summary_tokens)


if __name__ == "__main__":
    asyncio.run(main())
