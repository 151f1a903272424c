"""Routing decisions counted by reason, in memory (exported by the admin endpoint and metrics).

Reasons are dotted names, e.g. ``pick.prefix_affinity``, ``skip.breaker_open``,
``retry.attempt``, ``fallback.model``, ``shed.queue_full``; ``snapshot()`` returns them all.
"""

from __future__ import annotations

from collections import Counter


class RoutingStats:
    __slots__ = ("decisions",)

    def __init__(self) -> None:
        self.decisions: Counter[str] = Counter()

    def count(self, reason: str, n: int = 1) -> None:
        self.decisions[reason] += n

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.decisions.items()))
