"""How many GPUs one replica of a model needs, what one replica serves, and how many replicas the
peak takes: memory (weights + KV cache) and throughput (a bench sweep, or a roofline estimate)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tokenway.cost.bench_file import BenchResults
from tokenway.cost.catalogue import Gpu, ModelSpec
from tokenway.cost.traffic import Traffic

GIB = 1024**3
# The share of a GPU's memory an engine gives to weights and KV cache: vLLM's default
# gpu_memory_utilization. The rest holds activations, CUDA graphs and the CUDA context.
MEMORY_UTILISATION = 0.90
# Decode reads every weight and the batch's KV cache once per step; engines reach about this
# share of the data sheet's bandwidth. Prefill is bound by compute, at about this share of peak.
BANDWIDTH_EFFICIENCY = 0.70
PREFILL_MFU = 0.50
TENSOR_PARALLEL = (1, 2, 4, 8)  # GPUs one replica may span: one host's NVLink domain


class SizingError(ValueError):
    """The model does not fit on the GPU at the asked concurrency and context; says what to change."""


@dataclass(frozen=True, slots=True)
class Memory:
    weights_gib: float
    kv_bytes_per_token: float
    context_tokens: int  # per sequence: prompt and completion
    concurrency: int
    kv_gib: float
    gpus: int  # per replica, tensor parallel
    available_gib: float  # for weights and KV cache on those GPUs

    @property
    def needed_gib(self) -> float:
        return self.weights_gib + self.kv_gib


def size_memory(model: ModelSpec, dtype: str, kv_dtype: str, gpu: Gpu, gpu_name: str, concurrency: int,
                context_tokens: int) -> Memory:
    """The fewest GPUs (1, 2, 4 or 8) whose memory holds the weights and ``concurrency`` sequences'
    KV cache of ``context_tokens`` each."""
    weights = model.weight_bytes(dtype) / GIB
    per_token = model.kv_bytes_per_token(kv_dtype)
    kv = concurrency * context_tokens * per_token / GIB
    for gpus in TENSOR_PARALLEL:
        available = gpus * gpu.memory_gib * MEMORY_UTILISATION
        if weights + kv <= available:
            return Memory(weights, per_token, context_tokens, concurrency, kv, gpus, available)
    most = TENSOR_PARALLEL[-1] * gpu.memory_gib * MEMORY_UTILISATION
    raise SizingError(
        f"{weights:.1f} GiB of weights ({dtype}) + {kv:.1f} GiB of KV cache ({concurrency} sequences x "
        f"{context_tokens} tokens) do not fit in {TENSOR_PARALLEL[-1]} x {gpu_name} ({most:.0f} GiB usable). "
        "Pick a larger --gpu, a smaller --dtype or --kv-dtype, or a lower --concurrency or --context."
    )


@dataclass(frozen=True, slots=True)
class Throughput:
    """What one replica serves at ``concurrency`` sequences in flight."""

    requests_per_s: float
    output_tokens_per_s: float
    concurrency: int
    measured: bool
    # The share of GPU time spent on prompts (prefill), from the roofline: it splits the cost between
    # input and output tokens.
    prefill_share: float
    assumptions: tuple[str, ...]


def roofline(model: ModelSpec, memory: Memory, dtype: str, gpu: Gpu, traffic: Traffic) -> Throughput:
    """An estimate: decode bound by memory bandwidth, prefill by compute."""
    bandwidth = memory.gpus * gpu.bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY
    mean_context = traffic.prompt.mean + traffic.completion.mean / 2
    step_s = (model.weight_bytes(dtype) + memory.concurrency * mean_context * memory.kv_bytes_per_token) / bandwidth
    decode_s = traffic.completion.mean * step_s / memory.concurrency  # each step serves the whole batch
    prefill_s = 2 * model.params_b * 1e9 * traffic.prompt.mean / (memory.gpus * gpu.fp16_tflops * 1e12 * PREFILL_MFU)
    rps = 1 / (decode_s + prefill_s)
    return Throughput(
        requests_per_s=rps,
        output_tokens_per_s=rps * traffic.completion.mean,
        concurrency=memory.concurrency,
        measured=False,
        prefill_share=prefill_s / (decode_s + prefill_s),
        assumptions=(
            f"decode: each step reads the weights and the batch's KV cache at {BANDWIDTH_EFFICIENCY:.0%} of "
            f"{gpu.bandwidth_gbs:g} GB/s per GPU",
            f"prefill: 2 x parameters FLOPs per prompt token at {PREFILL_MFU:.0%} of {gpu.fp16_tflops:g} "
            "TFLOPS per GPU, not overlapped with decode",
            f"{memory.concurrency} sequences in flight, mean context {mean_context:.0f} tokens",
        ),
    )


def measured(results: BenchResults, estimate: Throughput) -> Throughput:
    """The sweep's best load point (by goodput under its SLO, else by completed requests/s)."""
    best = results.best
    slo = ", ".join(f"{k} ≤ {v:g} ms" for k, v in results.slo_ms.items())
    by = f"goodput under {slo}" if best.goodput_per_s is not None else "completed requests/s (no SLO in the file)"
    return Throughput(
        requests_per_s=best.capacity,
        output_tokens_per_s=best.output_tokens_per_s,
        concurrency=best.concurrency,
        measured=True,
        prefill_share=estimate.prefill_share,
        assumptions=(
            f"measured by tokenway bench ({results.path}): best of {len(results.points)} load points by {by}: "
            f"{best.label}",
            "one replica of the GPUs chosen here is what the bench ran against",
            "input/output cost split from the roofline's share of GPU time in prefill",
        ),
    )


def replicas_for(peak_rps: float, replica_rps: float, utilisation: float) -> int:
    """Replicas that carry the peak with each at most ``utilisation`` busy (at least one)."""
    return max(1, math.ceil(peak_rps / (replica_rps * utilisation) - 1e-9))
