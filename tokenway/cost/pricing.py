"""What the traffic costs on each option: self-hosted (on-demand, spot) and every API model in the
price table (``tokenway/prices.py``), and the volume at which self-hosting breaks even."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tokenway.cost.traffic import DAY_S, DAYS_PER_MONTH, Traffic
from tokenway.prices import PRICES, SOURCES

HOURS_PER_MONTH = 24 * DAYS_PER_MONTH


@dataclass(frozen=True, slots=True)
class SelfHosted:
    """Replicas of ``gpus_per_replica`` GPUs at ``gpu_hourly`` USD each, each serving ``replica_rps``."""

    label: str  # "self-hosted on-demand" or "self-hosted spot"
    gpus_per_replica: int
    gpu_hourly: float
    replica_rps: float
    utilisation: float  # the busiest minute may keep a replica this busy
    prefill_share: float
    verified: bool = False  # the GPU's specs, this price and the model's figures are checked

    @property
    def replica_day_cost(self) -> float:
        return self.gpus_per_replica * self.gpu_hourly * 24

    def replica_requests_per_day(self, peak_factor: float) -> float:
        """The daily volume one replica carries when the peak is ``peak_factor`` x the mean rate."""
        return self.replica_rps * self.utilisation * DAY_S / peak_factor

    def replicas(self, traffic: Traffic) -> int:
        return max(1, math.ceil(traffic.requests_per_day / self.replica_requests_per_day(traffic.peak_factor) - 1e-9))

    def per_month(self, traffic: Traffic) -> float:
        return self.replicas(traffic) * self.replica_day_cost * DAYS_PER_MONTH


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    kind: str  # "self-hosted" or "api"
    per_1k_requests: float
    per_1m_input: float
    per_1m_output: float
    per_month: float
    replicas: int | None = None  # self-hosted only
    verified: bool = False  # its price (self-hosted: and its GPU's specs, model's figures) checked
    # API only: the requests/day from which self-hosting (on-demand, spot) is cheaper for good; None: never.
    break_even_on_demand: float | None = None
    break_even_spot: float | None = None


def break_even(replica_day_cost: float, replica_per_day: float, api_per_request: float) -> float | None:
    """The requests/day from which self-hosting costs no more than the API at every higher volume.

    Self-hosting costs n x C a day for volumes up to n x M (C: a replica's day, M: what it carries);
    the API costs a x R. Volume n x M + 1 needs replica n + 1, so the steps make the comparison flip
    back and forth until n x C ≤ a x (n - 1) x M, i.e. n ≥ aM / (aM - C); from replica n on, the
    API is dearer everywhere, and within replica n - 1's range from (n - 1) x C / a on. When one
    full replica (C / M per request) is no cheaper than the API, self-hosting never breaks even."""
    a, capacity = api_per_request, api_per_request * replica_per_day
    if capacity <= replica_day_cost:
        return None
    n = math.ceil(capacity / (capacity - replica_day_cost) - 1e-9)
    return max(n - 1, 1) * replica_day_cost / a


def api_per_request(model: str, traffic: Traffic) -> float:
    price_in, price_out = PRICES[model]
    return (traffic.prompt.mean * price_in + traffic.completion.mean * price_out) / 1e6


def chat_models() -> list[str]:
    """The price table's models that bill completions (embedding models have no output price)."""
    return [name for name, (_, price_out) in PRICES.items() if price_out > 0]


def self_hosted_option(setup: SelfHosted, traffic: Traffic) -> Option:
    monthly = setup.per_month(traffic)
    requests = traffic.requests_per_day * DAYS_PER_MONTH
    return Option(
        name=setup.label,
        kind="self-hosted",
        per_1k_requests=monthly / requests * 1000,
        per_1m_input=monthly * setup.prefill_share / (requests * traffic.prompt.mean) * 1e6,
        per_1m_output=monthly * (1 - setup.prefill_share) / (requests * traffic.completion.mean) * 1e6,
        per_month=monthly,
        replicas=setup.replicas(traffic),
        verified=setup.verified,
    )


def api_option(model: str, traffic: Traffic, on_demand: SelfHosted, spot: SelfHosted | None) -> Option:
    per_request = api_per_request(model, traffic)
    price_in, price_out = PRICES[model]

    def even(setup: SelfHosted | None) -> float | None:
        if setup is None:
            return None
        return break_even(setup.replica_day_cost, setup.replica_requests_per_day(traffic.peak_factor), per_request)

    return Option(
        name=model,
        kind="api",
        per_1k_requests=per_request * 1000,
        per_1m_input=price_in,
        per_1m_output=price_out,
        per_month=per_request * traffic.requests_per_day * DAYS_PER_MONTH,
        break_even_on_demand=even(on_demand),
        break_even_spot=even(spot),
        verified=model in SOURCES,
    )


def options(traffic: Traffic, on_demand: SelfHosted, spot: SelfHosted | None, apis: list[str]) -> list[Option]:
    """Self-hosted first, then the APIs from cheapest to dearest for this traffic."""
    hosted = [self_hosted_option(s, traffic) for s in (on_demand, spot) if s is not None]
    priced = [api_option(m, traffic, on_demand, spot) for m in apis]
    return hosted + sorted(priced, key=lambda o: o.per_month)
