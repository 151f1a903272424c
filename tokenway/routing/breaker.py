"""A circuit breaker per deployment: closed → open → half-open → closed.

Opens when the error rate over a sliding window passes a threshold (with enough calls to
judge), or after N consecutive failures (passive outlier detection: a worker that starts
failing every call is ejected within N calls, whatever its history). While open, routing skips
the deployment; after the cooldown a few probe calls are let through (half-open), and one
success closes it again while one failure re-opens it.

The window is a ring of one-second buckets: O(1) per call, no per-call allocation. Time is
read from the clock the breaker is given (tests pass a fake one and move it forward).
"""

from __future__ import annotations

from typing import Literal

from tokenway.clock import SYSTEM_CLOCK, Clock
from tokenway.routing.options import BreakerConfig

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    __slots__ = (
        "_buckets", "_clock", "_config", "_probes", "consecutive", "opened_at", "opens", "reason", "state",
    )

    def __init__(self, config: BreakerConfig, clock: Clock = SYSTEM_CLOCK) -> None:
        self._config = config
        self._clock = clock
        size = max(1, int(config.window + 0.999))
        # each bucket: [second, calls, failures]
        self._buckets: list[list[int]] = [[-1, 0, 0] for _ in range(size)]
        self._probes = 0
        self.state: State = "closed"
        self.consecutive = 0
        self.opened_at = 0.0
        self.opens = 0  # how many times it opened, for the admin view
        self.reason = ""

    def follows(self, config: BreakerConfig, clock: Clock) -> bool:
        """Whether this breaker already runs on ``config`` and ``clock`` (then a config reload keeps its state)."""
        return self._config == config and self._clock is clock

    def allows(self) -> bool:
        """Whether routing may pick this deployment now (does not take a probe slot)."""
        if self.state == "closed":
            return True
        if self.state == "open":
            return self._clock.now() - self.opened_at >= self._config.cooldown
        return self._probes < self._config.half_open_probes

    def acquire(self) -> bool:
        """Take the right to call: always when closed, one probe slot when half-open."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if self._clock.now() - self.opened_at < self._config.cooldown:
                return False
            self.state, self._probes = "half_open", 0
        if self._probes >= self._config.half_open_probes:
            return False
        self._probes += 1
        return True

    def success(self) -> None:
        self.consecutive = 0
        self._count(self._clock.now(), failed=False)
        if self.state == "half_open":
            self._close()

    def failure(self) -> None:
        now = self._clock.now()
        self.consecutive += 1
        calls, failures = self._count(now, failed=True)
        if self.state == "half_open":
            self._open(now, "probe failed")
        elif self.state == "closed":
            config = self._config
            if self.consecutive >= config.consecutive_failures:
                self._open(now, f"{self.consecutive} consecutive failures")
            elif calls >= config.min_calls and failures / calls >= config.error_rate:
                self._open(now, f"{failures}/{calls} calls failed in {config.window:g}s")

    def closes_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it already would)."""
        if self.state != "open":
            return 0.0
        return max(0.0, self.opened_at + self._config.cooldown - self._clock.now())

    def release_probe(self) -> None:
        """A probe that ended without a verdict (client hung up, non-retryable error)."""
        if self.state == "half_open" and self._probes > 0:
            self._probes -= 1

    def window(self) -> tuple[int, int]:
        """(calls, failures) in the window ending now."""
        return self._totals(int(self._clock.now()))

    def _totals(self, second: int) -> tuple[int, int]:
        horizon = second - len(self._buckets)
        calls = failures = 0
        for stamp, c, f in self._buckets:
            if stamp > horizon:
                calls += c
                failures += f
        return calls, failures

    def _count(self, now: float, *, failed: bool) -> tuple[int, int]:
        second = int(now)
        bucket = self._buckets[second % len(self._buckets)]
        if bucket[0] != second:
            bucket[0], bucket[1], bucket[2] = second, 0, 0
        bucket[1] += 1
        bucket[2] += failed
        return self._totals(second)

    def _open(self, now: float, reason: str) -> None:
        self.state, self.opened_at, self.reason = "open", now, reason
        self.opens += 1
        self._probes = 0

    def _close(self) -> None:
        self.state, self.reason, self.consecutive = "closed", "", 0
        for bucket in self._buckets:  # a recovered deployment starts with a clean slate
            bucket[0], bucket[1], bucket[2] = -1, 0, 0

    def snapshot(self) -> dict[str, object]:
        calls, failures = self.window()
        return {
            "state": self.state, "reason": self.reason, "consecutive_failures": self.consecutive,
            "window_calls": calls, "window_failures": failures, "opens": self.opens,
        }
