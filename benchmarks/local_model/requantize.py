"""Write a Q4_0 copy of the bundled SmolLM2 GGUF, to benchmark llama.cpp's repacked Q4_0 kernels.

    python benchmarks/local_model/requantize.py /tmp/smollm2-q4_0.gguf
    python benchmarks/local_model/bench_llama.py --model-path /tmp/smollm2-q4_0.gguf

The bundled file is Q4_1, which llama.cpp's CPU backend multiplies one token at a time; Q4_0
weights are repacked at load into interleaved blocks with batched (GEMM) kernels, so several
sequences decoded together cost much less than one after another. Requantizing already
quantized weights loses a little quality: this is for measurement, not a shipped model.
"""

from __future__ import annotations

import argparse

import llama_cpp as llama

from tokenway.providers.local.model_files import bundled_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output")
    args = parser.parse_args()
    params = llama.llama_model_quantize_default_params()
    params.ftype = llama.LLAMA_FTYPE_MOSTLY_Q4_0
    params.allow_requantize = True
    if llama.llama_model_quantize(str(bundled_model_path()).encode(), args.output.encode(), params) != 0:
        raise SystemExit("llama.cpp could not requantize the model")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
