"""Phase 1: plain transformers ``generate_batch`` on the dummy model, the reference the gateway is held to.

This is the measurement the issue names: ``attn_implementation="paged|sdpa"``, greedy, the manager's
own defaults for cache and batch sizes, all requests handed over at once. The whole call is timed,
cache allocation included, as a user of ``generate_batch`` would see it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from workload import PhaseResult, build_workload, percentile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="model folder (config.json + tokenizer)")
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--input-tokens", type=int, default=256)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--num-blocks", type=int, help="KV cache blocks (default: sized from free memory)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, ContinuousBatchingConfig, GenerationConfig

    workload = build_workload(args.model, args.requests, args.input_tokens)
    device = torch.device(args.device)
    started = time.perf_counter()
    with device:
        model = AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(args.model),
            dtype=getattr(torch, args.dtype),
            attn_implementation="paged|sdpa",
        ).eval()
    load_s = time.perf_counter() - started
    # eos -1: never stop early, every request yields exactly output_tokens (as ignore_eos does).
    generation = GenerationConfig(max_new_tokens=args.output_tokens, do_sample=False, eos_token_id=-1)
    # None: the manager's defaults, as the reference was measured. A CPU smoke run needs a bound.
    cb_config = (
        ContinuousBatchingConfig(num_blocks=args.num_blocks, block_size=32, max_batch_tokens=512)
        if args.num_blocks
        else None
    )

    # A small run first, so that kernel loading and the allocator's growth are not in the figure.
    model.generate_batch(
        workload.prompt_ids[:8],
        generation_config=generation,
        continuous_batching_config=cb_config,
        max_new_tokens=4,
    )

    started = time.perf_counter()
    outputs = model.generate_batch(
        workload.prompt_ids,
        generation_config=generation,
        continuous_batching_config=cb_config,
        record_timestamps=True,
    )
    wall = time.perf_counter() - started

    done = [o for o in outputs.values() if o.error is None]
    completion = sum(len(o.generated_tokens) for o in done)
    ttfts = [o.timestamps[0] - o.created_time for o in done if o.timestamps]
    span = max(o.lifespan[1] for o in done) - min(o.created_time for o in done) if done else 0.0
    PhaseResult(
        phase="raw generate_batch",
        requests=len(workload.prompt_ids),
        ok=len(done),
        prompt_tokens_mean=sum(map(len, workload.prompt_ids)) / len(workload.prompt_ids),
        completion_tokens=completion,
        wall_s=round(wall, 3),
        output_tok_s=round(completion / wall, 1),
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p99_s=percentile(ttfts, 99),
        notes={
            "load_s": round(load_s, 1),
            "first_request_to_last_token_s": round(span, 3),
            "output_tok_s_over_that_span": round(completion / span, 1) if span else None,
            "attn_implementation": "paged|sdpa",
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "max_memory_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)
            if torch.cuda.is_available()
            else None,
        },
    ).write(args.json)


if __name__ == "__main__":
    main()
