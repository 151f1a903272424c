"""The release policy's own cost per request, in process: what it adds before the primary goes on.

Calls ``ReleaseSplit`` directly with a next handler that answers at once, for a model with no
release (the policy passes it on), a sticky split, and a split that copies every request to a
shadow (the copy is a task that runs after the primary's call returned, so it is timed apart).

    .venv/bin/python benchmarks/releases/policy_cost.py --calls 50000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tokenway.config import parse_config
from tokenway.context import RequestContext
from tokenway.providers.base import Answer, Call, Completion
from tokenway.releases.policy import ReleaseSplit
from tokenway.releases.record import ReleaseRecord

CONFIG = """\
models:
  - name: plain
    deployments: [{provider: openai, api_base: "http://x/v1"}]
  - name: split
    deployments: [{provider: openai, api_base: "http://x/v1"}]
    release:
      versions: [{name: a, model: split, weight: 90}, {name: b, model: other, weight: 10}]
  - name: shadowed
    deployments: [{provider: openai, api_base: "http://x/v1"}]
    release:
      versions: [{name: a, model: shadowed, weight: 90}, {name: b, model: other, weight: 10}]
      shadow: {model: other, percent: 100, max_concurrent: 1000000}
  - name: other
    deployments: [{provider: openai, api_base: "http://x/v1"}]
"""


async def answer(_: RequestContext, __: Call) -> Answer:
    return Completion(b"{}")


async def per_call_us(policy: ReleaseSplit, model: str, calls: int) -> float:
    body = {"messages": [{"role": "user", "content": "hi"}], "model": model}
    contexts = [RequestContext(f"req_{i}", "chat") for i in range(calls)]
    bodies = [{**body, "user": f"user-{i}"} for i in range(calls)]
    started = time.perf_counter()
    for ctx, call_body in zip(contexts, bodies, strict=True):
        await policy(ctx, Call("chat", call_body), answer)
    elapsed = time.perf_counter() - started
    await asyncio.sleep(0)  # the shadow tasks run here, off the timed path
    return elapsed / calls * 1e6


async def run(calls: int) -> dict[str, float]:
    record = ReleaseRecord()
    policy = ReleaseSplit(parse_config(CONFIG), record)
    await per_call_us(policy, "split", 1000)  # warm up
    out = {}
    for model in ("plain", "split", "shadowed"):
        out[model] = round(min([await per_call_us(policy, model, calls) for _ in range(5)]), 2)
        await asyncio.gather(*record.shadows)  # the copies' own work, never timed
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000)
    args = parser.parse_args()
    print(json.dumps({"us_per_call (best of 5)": asyncio.run(run(args.calls))}, indent=2))


if __name__ == "__main__":
    main()
