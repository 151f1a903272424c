"""What one decode step's token choice costs on the GPU: transformers' per-request sampling vs argmax.

The transformers engine builds its manager to sample (per-request temperature and top-p
processors, then a multinomial draw); a greedy request is top-p 0. ``cb_steps`` takes an argmax
instead when every row of a step is greedy. This times both on the logits of one step of the
benchmark (``--rows`` rows of the vocabulary, fp32, as the manager hands them over), with CUDA
events, median of ``--repeat`` after a warm-up.

    python3 benchmarks/gpu/sampling_step.py --rows 512 --vocab 128256
"""

from __future__ import annotations

import argparse
import json
import statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()

    import torch
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingTemperatureLogitsWarper,
        ContinuousBatchingTopPLogitsWarper,
    )
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    device = torch.device(args.device)
    logits = torch.randn(args.rows, args.vocab, device=device, dtype=torch.float32)
    # The engine's greedy rows: temperature 1, top-p 0 (int32 views of float32, as the manager stores them).
    temperature = torch.full((args.rows,), 1.0, device=device).view(torch.int32)
    top_p = torch.full((args.rows,), 0.0, device=device).view(torch.int32)
    processors = [
        (ContinuousBatchingTemperatureLogitsWarper(TemperatureLogitsWarper(0.7)), temperature),
        (ContinuousBatchingTopPLogitsWarper(TopPLogitsWarper(0.9)), top_p),
    ]

    def sampled() -> torch.Tensor:
        scores = logits
        for processor, arg in processors:
            scores = processor(scores, arg)
        return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(-1)

    def greedy() -> torch.Tensor:
        return torch.argmax(logits, dim=-1)

    def time_ms(fn: object) -> float:
        assert callable(fn)
        for _ in range(5):
            fn()
        times = []
        for _ in range(args.repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    same = bool(torch.equal(sampled(), greedy()))
    result = {
        "rows": args.rows,
        "vocab": args.vocab,
        "sampled_ms": round(time_ms(sampled), 3),
        "argmax_ms": round(time_ms(greedy), 3),
        "same_tokens": same,
        "gpu": torch.cuda.get_device_name(device),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
