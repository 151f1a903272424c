"""Phase 2: tokenway's TransformersEngine in-process, all requests at once, no HTTP.

Separates what the engine adapter costs (per-request sampling processors, streaming every token
to asyncio, incremental detokenization) from what the HTTP server and the provider add (phase 3).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from workload import PhaseResult, build_workload, percentile


async def run(args: argparse.Namespace) -> None:
    from tokenway.providers.local.engine import GenerationRequest, SamplingParams
    from tokenway.providers.local.options import LocalOptions
    from tokenway.providers.local.transformers_engine import TransformersEngine

    workload = build_workload(args.model, args.requests, args.input_tokens)
    options = LocalOptions(
        engine="transformers",
        model_path=args.model,
        load_format="dummy",
        device=args.device,
        dtype=args.dtype,
        context_window=args.context_window,
        slots=args.requests,
        kv_cache_tokens=args.kv_cache_tokens,
        max_batch_tokens=args.max_batch_tokens,
    )
    engine = TransformersEngine(options)
    started = time.perf_counter()
    await engine.start()
    load_s = time.perf_counter() - started

    async def one(prompt: list[int]) -> tuple[int, float | None]:
        sent = time.perf_counter()
        first = None
        count = 0
        params = SamplingParams(max_tokens=args.output_tokens, temperature=0.0, ignore_eos=True)
        async for piece in engine.generate(GenerationRequest(prompt, params)):
            if first is None:
                first = time.perf_counter() - sent
            count += 1
            del piece
        return count, first

    started = time.perf_counter()
    results = await asyncio.gather(*(one(p) for p in workload.prompt_ids), return_exceptions=True)
    wall = time.perf_counter() - started
    await engine.aclose()

    done = [r for r in results if isinstance(r, tuple)]
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    completion = sum(count for count, _ in done)
    ttfts = [first for _, first in done if first is not None]
    PhaseResult(
        phase="engine in-process",
        requests=len(workload.prompt_ids),
        ok=len(done),
        prompt_tokens_mean=sum(map(len, workload.prompt_ids)) / len(workload.prompt_ids),
        completion_tokens=completion,
        wall_s=round(wall, 3),
        output_tok_s=round(completion / wall, 1),
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p99_s=percentile(ttfts, 99),
        notes={"load_and_warmup_s": round(load_s, 1), "errors": errors[:3], "options": options.model_dump()},
    ).write(args.json)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--input-tokens", type=int, default=256)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--context-window", type=int, default=512)
    parser.add_argument("--kv-cache-tokens", type=int)
    parser.add_argument("--max-batch-tokens", type=int)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--json", type=Path, required=True)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
