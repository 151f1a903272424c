"""One cost estimate: the traffic, the model, the GPU (given, or the cheapest that fits), the sizing,
the throughput and every option's price."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tokenway.cost.bench_file import BenchResults
from tokenway.cost.catalogue import CatalogueError, CloudPrice, Gpu, GpuFile, ModelSpec, pick
from tokenway.cost.pricing import Option, SelfHosted, options
from tokenway.cost.sizing import Memory, SizingError, Throughput, measured, roofline, size_memory
from tokenway.cost.traffic import Traffic


@dataclass(frozen=True, slots=True)
class Request:
    """What the user asked for (flags), once checked against the catalogue."""

    traffic: Traffic
    model_name: str
    model: ModelSpec
    dtype: str
    kv_dtype: str
    catalogue: GpuFile
    gpu: str | None  # None: the cheapest GPU that fits
    cloud: str | None  # None: the GPU's cheapest cloud
    concurrency: int | None  # None: the bench's best point, else DEFAULT_CONCURRENCY
    context: int | None  # None: p95 prompt + p95 completion, up to the model's context length
    utilisation: float
    bench: BenchResults | None
    apis: list[str]


DEFAULT_CONCURRENCY = 32


@dataclass(frozen=True, slots=True)
class Plan:
    """One GPU on one cloud, sized and priced."""

    gpu_name: str
    cloud: str
    price: CloudPrice
    memory: Memory
    throughput: Throughput
    on_demand: SelfHosted
    spot: SelfHosted | None


@dataclass(frozen=True, slots=True)
class Estimate:
    request: Request
    plan: Plan
    options: list[Option]
    alternatives: list[Plan]  # the other GPUs that fit, when none was named


def _cloud(gpu_name: str, gpu: Gpu, cloud: str | None) -> tuple[str, CloudPrice]:
    if not gpu.prices:
        raise CatalogueError(f"GPU {gpu_name!r} has no prices: add some under gpus.{gpu_name}.prices in --gpus FILE.")
    if cloud is None:
        return min(gpu.prices.items(), key=lambda item: item[1].on_demand)
    name = pick(f"cloud for {gpu_name}", cloud, dict(gpu.prices))
    return name, gpu.prices[name]


def plan_for(request: Request, gpu_name: str) -> Plan:
    gpu = request.catalogue.gpus[gpu_name]
    traffic = request.traffic
    cloud, price = _cloud(gpu_name, gpu, request.cloud)
    best = request.bench.best if request.bench is not None else None
    concurrency = request.concurrency or (best.concurrency if best else DEFAULT_CONCURRENCY)
    longest = math.ceil(traffic.prompt.p95 + traffic.completion.p95)
    context = request.context or min(request.model.context_length, longest)
    memory = size_memory(request.model, request.dtype, request.kv_dtype, gpu, gpu_name, concurrency, context)
    throughput = roofline(request.model, memory, request.dtype, gpu, traffic)
    if request.bench is not None:
        throughput = measured(request.bench, throughput)

    def setup(kind: str, hourly: float) -> SelfHosted:
        return SelfHosted(f"self-hosted {kind}", memory.gpus, hourly, throughput.requests_per_s,
                          request.utilisation, throughput.prefill_share,
                          gpu.verified and price.verified and request.model.verified)

    spot = setup("spot", price.spot) if price.spot is not None else None
    return Plan(gpu_name, cloud, price, memory, throughput, setup("on-demand", price.on_demand), spot)


def estimate(request: Request) -> Estimate:
    gpus = request.catalogue.gpus
    if request.gpu is not None:
        plan, alternatives = plan_for(request, pick("GPU", request.gpu, dict(gpus))), []
    else:
        if request.bench is not None:
            raise CatalogueError("--bench needs --gpu: the GPU (one replica of it) the bench ran against.")
        fits, reasons = [], []
        for name, gpu in gpus.items():
            if request.cloud is not None and request.cloud not in gpu.prices:
                continue
            try:
                fits.append(plan_for(request, name))
            except SizingError as exc:
                reasons.append(f"{name}: {exc}")
        if not fits:
            raise SizingError("No GPU in the catalogue fits:\n" + "\n".join(reasons))
        fits.sort(key=lambda p: p.on_demand.per_month(request.traffic))
        plan, alternatives = fits[0], fits[1:]
    return Estimate(request, plan, options(request.traffic, plan.on_demand, plan.spot, request.apis), alternatives)
