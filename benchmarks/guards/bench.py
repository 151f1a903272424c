"""What the guards cost: the PII scan on a 2 KB prompt, the policy end to end in process, and the
gateway's requests/s with guards off and on, in one run.

    .venv/bin/python benchmarks/guards/bench.py [--rounds 5] [--requests 200]

Per-call timings are the best of ``--rounds`` rounds (as ``timeit`` reports: on a shared box the
slower rounds measure the neighbours). For requests/s, a gateway with guards off and one with them on
run side by side and take turns (``2 * rounds`` turns each): only their ratio in one run means much.
Results: RESULTS.md beside this file.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for tests.inprocess

from tokenway.config import parse_config
from tokenway.context import RequestContext
from tokenway.guards.base import TextGuard
from tokenway.guards.pii import PiiFinder
from tokenway.guards.policy import open_guards
from tokenway.guards.stream_guard import StreamGuard
from tokenway.observability.logging import JsonLog
from tokenway.observability.metrics import Metrics
from tokenway.protocol import sse_event
from tokenway.providers.base import Answer, Call, Completion

# A support answer's worth of ordinary prose, with a few numbers as prompts have them.
PROSE = (
    "Thanks for getting in touch about your order. The gateway forwards each request to the upstream model "
    "and streams the answer back; operators configure models, deployments and keys in one YAML file. Version 3 "
    "added 12 options, and the release notes list what changed since March. Please describe what you expected, "
    "what happened instead, and the steps that lead there, so that we can reproduce it on our side. "
)
PROMPT = (PROSE * 6)[:2048]
# The same size with one of each kind in it.
MATCHES = " Mail bob@example.com, card 4111 1111 1111 1111, call +44 20 7946 0958, key AKIAIOSFODNN7EXAMPLE. "
WITH_MATCHES = (PROMPT[:1000] + MATCHES + PROMPT[1000:])[:2048]
# A digit-heavy prompt (a table of figures): the worst case for the number anchors.
FIGURES = (" ".join(f"row {i} 2024 {i * 37 % 1000} units {i * 13 % 97}.{i % 10}" for i in range(200)))[:2048]

CONFIG = """
models:
  - name: m
    guards: [default]
    deployments: [{provider: fake, name: a}]
guards:
  profiles:
    default:
      input: [{check: pii, action: mask}]
      output: [{check: pii, action: mask}]
"""
CONFIG_OFF = "models: [{name: m, deployments: [{provider: fake, name: a}]}]"
ANSWER = (b'{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":'
          b'{"role":"assistant","content":"' + PROSE[:400].encode() + b'"},"finish_reason":"stop"}]}')


def stream_chunk_us(rounds: int, n: int) -> float:
    """One chat chunk of a few words through the stream look-behind with the PII mask (per chunk, in
    a stream of ``n`` chunks of the prose)."""
    words = PROSE.split(" ")
    chunks = [sse_event({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                         "choices": [{"index": 0, "delta": {"content": " ".join(words[i:i + 3]) + " "},
                                      "finish_reason": None}]}) for i in range(0, len(words), 3)]
    best = float("inf")
    for _ in range(rounds):
        guard = StreamGuard([TextGuard("pii", "mask", PiiFinder())], [], 64, lambda *a: None)
        started = time.perf_counter()
        for i in range(n):
            guard.feed(chunks[i % len(chunks)])
        best = min(best, (time.perf_counter() - started) / n * 1e6)
    return best


def per_call_us(fn: Callable[[], object], rounds: int, n: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - started) / n * 1e6)
    return min(samples)


async def policy_us(rounds: int, n: int) -> tuple[float, float]:
    """The policy around a handler that answers at once: input and output PII mask on the 2 KB prompt,
    against calling the handler alone."""
    guards = await open_guards(parse_config(CONFIG.replace("provider: fake", "provider: openai")), Metrics(),
                               JsonLog(io.BytesIO()))
    assert guards is not None

    async def answer(ctx: RequestContext, call: Call) -> Answer:
        return Completion(body=ANSWER)

    async def one(guarded: bool) -> None:
        call = Call("chat", {"model": "m", "messages": [{"role": "user", "content": PROMPT}]})
        ctx = RequestContext("r", "chat")
        if guarded:
            await guards(ctx, call, answer)
        else:
            await answer(ctx, call)

    async def timed(guarded: bool) -> float:
        started = time.perf_counter()
        for _ in range(n):
            await one(guarded)
        return (time.perf_counter() - started) / n * 1e6

    off, on = [], []
    for _ in range(rounds):
        off.append(await timed(False))
        on.append(await timed(True))
    return min(off), min(on)


async def gateway_rps(rounds: int, requests: int, first: str, second: str) -> tuple[float, float]:
    """Requests/s of the whole gateway in process (ASGI, a scripted provider) serving ``first`` and
    ``second``: both run side by side and take turns, ``requests`` calls a turn, so that both see the
    same box."""
    from tests.inprocess import Harness, gateway, reply

    body = {"messages": [{"role": "user", "content": PROMPT}]}

    async def turn(gw: Harness, n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            r = await gw.chat(**body)
            assert r.status_code == 200
        return time.perf_counter() - started

    async with gateway(first) as off, gateway(second) as on:
        for gw in (off, on):
            gw.fake("a").script(*[reply(PROSE[:400]) for _ in range(2 * rounds * requests + 50)])
            await turn(gw, 50)
        spent = {id(off): 0.0, id(on): 0.0}
        for i in range(2 * rounds):
            for gw in (off, on) if i % 2 == 0 else (on, off):
                spent[id(gw)] += await turn(gw, requests)
    calls = 2 * rounds * requests
    return calls / spent[id(off)], calls / spent[id(on)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200, help="calls per turn in the requests/s comparison")
    args = parser.parse_args()
    finder = PiiFinder()
    assert not finder.find(PROMPT) and len(finder.find(WITH_MATCHES)) == 4
    print(f"PII scan, 2 KB prose, no match:     {per_call_us(lambda: finder.find(PROMPT), args.rounds, 5000):7.1f} µs")
    print(f"PII scan, 2 KB prose, 4 matches:    "
          f"{per_call_us(lambda: finder.find(WITH_MATCHES), args.rounds, 5000):7.1f} µs")
    print(f"PII scan, 2 KB table of figures:    {per_call_us(lambda: finder.find(FIGURES), args.rounds, 2000):7.1f} µs")
    print(f"stream chunk through the look-behind: {stream_chunk_us(args.rounds, 5000):7.1f} µs")
    off, on = asyncio.run(policy_us(args.rounds, 2000))
    print(f"policy in process (mask in + out):  {on:7.1f} µs (handler alone {off:.1f} µs; policy {on - off:.1f} µs)")
    rps_a, rps_b = asyncio.run(gateway_rps(args.rounds, args.requests, CONFIG_OFF, CONFIG_OFF))
    print(f"gateway in process, requests/s:     off {rps_a:.0f}, off again {rps_b:.0f} "
          f"(the control: {rps_b / rps_a:.3f})")
    rps_off, rps_on = asyncio.run(gateway_rps(args.rounds, args.requests, CONFIG_OFF, CONFIG))
    print(f"gateway in process, requests/s:     off {rps_off:.0f}, on {rps_on:.0f} (on/off {rps_on / rps_off:.3f})")


if __name__ == "__main__":
    main()
