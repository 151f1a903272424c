"""Balancing strategies: which of the routable deployments of a model gets the next call.

Each strategy returns the deployment and the reason for the choice (counted in
``RoutingStats`` as ``pick.<reason>``). Candidates are never empty: routing has already
dropped deployments that are full, ejected by their breaker or failing health checks.
"""

from __future__ import annotations

import random
from hashlib import blake2b
from typing import Any, Protocol

from tokenway.deployments import Deployment
from tokenway.providers.base import Call
from tokenway.routing.options import RoutingConfig


class Balancer(Protocol):
    def pick(self, candidates: list[Deployment], call: Call) -> tuple[Deployment, str]: ...


class WeightedRoundRobin:
    """nginx's smooth weighted round robin: weights 3:1 give A A B A, spread evenly, no randomness.

    Run over the candidates only, so a skipped deployment's share goes to the others.
    """

    def __init__(self) -> None:
        self._current: dict[int, float] = {}

    def pick(self, candidates: list[Deployment], call: Call) -> tuple[Deployment, str]:
        if len(candidates) == 1:
            return candidates[0], "round_robin"
        current = self._current
        total = 0.0
        best: Deployment | None = None
        best_value = 0.0
        for deployment in candidates:
            weight = deployment.config.weight
            total += weight
            value = current.get(id(deployment), 0.0) + weight
            current[id(deployment)] = value
            if best is None or value > best_value:
                best, best_value = deployment, value
        assert best is not None
        current[id(best)] = best_value - total
        return best, "round_robin"


class LeastInFlight:
    """Fewest calls in flight from this gateway per unit of weight; ties broken at random."""

    def pick(self, candidates: list[Deployment], call: Call) -> tuple[Deployment, str]:
        low = min(d.in_flight / d.config.weight for d in candidates)
        tied = [d for d in candidates if d.in_flight / d.config.weight == low]
        return random.choice(tied), "least_in_flight"


class LatencyP2C:
    """Power of two choices on EWMA time-to-first-byte times (in-flight + 1).

    Two random candidates, the cheaper one wins: near-best placement without herding every
    gateway replica onto the single fastest worker. A deployment with no sample yet scores as
    the fastest known one, so new and recovered workers get traffic to measure.
    """

    def pick(self, candidates: list[Deployment], call: Call) -> tuple[Deployment, str]:
        if len(candidates) == 1:
            return candidates[0], "latency_p2c"
        a, b = random.sample(candidates, 2)
        known = [d.ttft_ewma for d in candidates if d.ttft_ewma is not None]
        default = min(known) if known else 1.0
        score_a = (a.ttft_ewma if a.ttft_ewma is not None else default) * (a.in_flight + 1)
        score_b = (b.ttft_ewma if b.ttft_ewma is not None else default) * (b.in_flight + 1)
        return (a if score_a <= score_b else b), "latency_p2c"


class EngineAware:
    """Least loaded by the engine's own queue (waiting, running, KV use) plus our fresh calls."""

    def pick(self, candidates: list[Deployment], call: Call) -> tuple[Deployment, str]:
        return _least_loaded(candidates), "engine_least_loaded"


class PrefixAffinity:
    """Calls sharing a prompt prefix go to the same worker, whose KV cache already holds it.

    The worker is chosen by rendezvous hashing of the prefix over the candidates, so every
    gateway replica picks the same one without sharing state, and removing a worker moves only
    its own prefixes. Affinity gives way to load: if the preferred worker's load exceeds the
    least loaded one's by more than ``affinity_slack``, the next worker in the prefix's
    rendezvous order that is within the slack takes the call (and so builds a second cached
    copy of a hot prefix, on a worker every replica agrees on).
    """

    def __init__(self, config: RoutingConfig) -> None:
        self._chars = config.prefix_chars
        self._slack = config.affinity_slack

    def pick(self, candidates: list[Deployment], call: Call) -> tuple[Deployment, str]:
        key = prefix_key(call.body, self._chars)
        if key is None or len(candidates) == 1:
            return _least_loaded(candidates), "engine_least_loaded"
        ranked = sorted(candidates, key=lambda d: _rendezvous(key, d.name), reverse=True)
        loads = [d.load() for d in ranked]
        ceiling = min(loads) + self._slack
        for rank, (deployment, load) in enumerate(zip(ranked, loads, strict=True)):
            if load <= ceiling:
                return deployment, "prefix_affinity" if rank == 0 else "prefix_spill"
        return ranked[0], "prefix_affinity"  # unreachable: the least loaded is within the slack


def build(config: RoutingConfig) -> Balancer:
    if config.strategy == "least_in_flight":
        return LeastInFlight()
    if config.strategy == "latency":
        return LatencyP2C()
    if config.strategy == "engine":
        return EngineAware()
    if config.strategy == "prefix":
        return PrefixAffinity(config)
    return WeightedRoundRobin()


def prefix_key(body: dict[str, Any], chars: int) -> bytes | None:
    """The first ``chars`` characters of the prompt (messages in order), as hash input."""
    messages = body.get("messages")
    if messages is None:
        prompt = body.get("prompt")
        text = prompt if isinstance(prompt, str) else "".join(p for p in prompt or [] if isinstance(p, str))
        return text[:chars].encode() if text else None
    parts: list[str] = []
    size = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text") or "" for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            continue
        parts.append(content[: chars - size])
        size += len(parts[-1])
        if size >= chars:
            break
    return "\x00".join(parts).encode() if size else None


def _rendezvous(key: bytes, name: str) -> int:
    return int.from_bytes(blake2b(key + name.encode(), digest_size=8).digest(), "big")


def _least_loaded(candidates: list[Deployment]) -> Deployment:
    best = min(d.load() / d.config.weight for d in candidates)
    return random.choice([d for d in candidates if d.load() / d.config.weight == best])
