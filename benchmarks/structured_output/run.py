"""What structured output costs per request, in process (no sockets): python benchmarks/structured_output/run.py

Measured, each as the median of 7 rounds of N calls, in one run so that the ratios hold on a busy box:

- pass-through: a chat request without ``response_format``/``tools`` through the policy, against calling
  the next handler directly (what the request path pays when nobody asks for structured output);
- contract: reading a request's contract (``Contract.of``) with a schema already compiled (the cache hit),
  and compiling it (a new schema, the cache miss);
- check: checking a valid reply against that schema (parse the content, validate).

Options: ``--n`` calls per round (default 20000).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from tokenway.config import parse_config
from tokenway.context import RequestContext
from tokenway.observability.metrics import Metrics
from tokenway.policies.structured_output import StructuredOutput
from tokenway.providers.base import Answer, Call, Completion
from tokenway.validation.replies import Contract
from tokenway.validation.schemas import SchemaCache

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags", "address"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                         "tags": {"type": "array", "items": {"type": "string"}},
                         "address": {"type": "object", "required": ["city"],
                                     "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}}}}
FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
CONTENT = orjson.dumps({"name": "Ada", "age": 36, "tags": ["math", "engines"], "address": {"city": "London"}}).decode()
REPLY = {"choices": [{"index": 0, "message": {"role": "assistant", "content": CONTENT}, "finish_reason": "stop"}]}
BODY = {"model": "m", "messages": [{"role": "user", "content": "Who was Ada Lovelace?"}]}


def per_call_us(fn: Callable[[], Any], n: int, rounds: int = 7) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(times)


async def pass_through(n: int) -> tuple[float, float]:
    policy = StructuredOutput(parse_config("models: [{name: m, deployments: [{provider: openai, api_base: x}]}]"),
                              Metrics())
    answer = Completion(b"{}")
    ctx = RequestContext(request_id="r", endpoint="chat")
    call = Call("chat", BODY)

    async def upstream(ctx: RequestContext, call: Call) -> Answer:
        return answer

    async def rounds(through: bool) -> float:
        times = []
        for _ in range(7):
            start = time.perf_counter()
            for _ in range(n):
                await (policy(ctx, call, upstream) if through else upstream(ctx, call))
            times.append((time.perf_counter() - start) / n * 1e6)
        return statistics.median(times)

    return await rounds(False), await rounds(True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    n = parser.parse_args().n
    direct, through = asyncio.run(pass_through(n))
    cache = SchemaCache()
    body = {**BODY, "response_format": FORMAT}
    contract = Contract.of(body, cache)
    assert contract is not None and contract.check(REPLY) is None
    hit = per_call_us(lambda: Contract.of(body, cache), n)
    miss = per_call_us(lambda: Contract.of(body, SchemaCache()), max(n // 20, 100))
    check = per_call_us(lambda: contract.check(REPLY), n)
    print(f"pass-through: next() alone {direct:.2f} us, through the policy {through:.2f} us "
          f"(+{through - direct:.2f} us, {through / direct:.2f}x)")
    print(f"contract, schema cached: {hit:.2f} us; schema compiled (cache miss): {miss:.1f} us")
    print(f"check of a valid reply ({len(CONTENT)} chars of content): {check:.2f} us")


if __name__ == "__main__":
    main()
