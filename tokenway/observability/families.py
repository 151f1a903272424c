"""Metric families for one process: plain numbers updated in place, turned into Prometheus samples
only when scraped.

prometheus-client guards every update with a lock and walks a histogram's buckets one by one in
Python: the eight updates of a JSON request took ~4.2 µs, against ~0.7 µs here
(``benchmarks/gateway_overhead/metrics_cost.py``). Here a counter is a float and a histogram finds
its bucket by bisection. Only the event loop updates metrics and serves the scrape, so no lock
is needed. The exposition (names, ``_total``,
``_created``, buckets, ``le`` labels) is prometheus-client's own, from its metric families. With
several worker processes the values must live in prometheus-client's shared files instead:
``Metrics`` then uses its classes, which take the same ``labels(...).inc()`` calls.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Sequence
from typing import Literal

from prometheus_client import metrics as prometheus_metrics
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

Kind = Literal["counter", "gauge", "histogram"]


class Count:
    """A counter's labelled value: it only goes up."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class Level:
    """A gauge's labelled value."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class Distribution:
    """A histogram's labelled counts: ``counts[i]`` observations in bucket ``i`` (not cumulative)."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.sum += amount
        self.counts[bisect_left(self.bounds, amount)] += 1  # the first bound >= amount: Prometheus' "le"


class Family:
    """One metric and its children by label values; registered in a ``CollectorRegistry`` like any collector."""

    def __init__(
        self, kind: Kind, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float] = ()
    ) -> None:
        self.kind = kind
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.bounds = tuple(float(b) for b in buckets)
        self._children: dict[tuple[str, ...], Count | Level | Distribution] = {}

    def labels(self, *values: str) -> Count | Level | Distribution:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, not {values}")
            kind = self.kind
            child = Distribution(self.bounds) if kind == "histogram" else Count() if kind == "counter" else Level()
            self._children[values] = child
        return child

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> list[Metric]:
        family = self._family()
        # prometheus-client's switch for the ``_created`` series (PROMETHEUS_DISABLE_CREATED_SERIES, or
        # ``disable_created_metrics()``), honoured as its own classes honour it.
        created = prometheus_metrics._use_created
        for values, child in list(self._children.items()):
            if isinstance(child, Distribution):
                assert isinstance(family, HistogramMetricFamily)
                buckets, seen = [], 0
                for bound, count in zip((*child.bounds, float("inf")), child.counts, strict=True):
                    seen += count
                    buckets.append((floatToGoString(bound), float(seen)))
                family.add_metric(list(values), buckets, child.sum)
                if created:
                    labels = dict(zip(self.labelnames, values, strict=True))
                    family.samples.append(Sample(self.name + "_created", labels, child.created))
            elif isinstance(child, Count):
                assert isinstance(family, CounterMetricFamily)
                family.add_metric(list(values), child.value, created=child.created if created else None)
            else:
                assert isinstance(family, GaugeMetricFamily)
                family.add_metric(list(values), child.value)
        return [family]

    def _family(self) -> Metric:
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        if self.kind == "gauge":
            return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
