"""The gateway's own metric families expose exactly what prometheus-client's classes would."""

from __future__ import annotations

import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import metrics as prometheus_metrics

from tokenway.observability.families import Family

BOUNDS = (0.005, 0.01, 0.25, 1, 10)  # integers too, as the gateway's own bounds have


def _exposition(registry: CollectorRegistry) -> str:
    return re.sub(r"(_created(\{[^}]*\})?) \S+", r"\1 T", generate_latest(registry).decode())


def _record(counter: Any, gauge: Any, histogram: Any) -> None:
    for amount in (0.0001, 0.005, 0.0051, 0.25, 3.0, 400.0):  # on a bound, between bounds, above them all
        histogram.labels("m", "false").observe(amount)
    histogram.labels("other", "true").observe(0.01)
    counter.labels("m", "200").inc()
    counter.labels("m", "200").inc(2.5)
    counter.labels("m", "429").inc()
    gauge.labels("chat").inc()
    gauge.labels("chat").inc()
    gauge.labels("chat").dec()


def _both_ways() -> tuple[str, str]:
    """The same updates through the gateway's families and through prometheus-client: (ours, theirs)."""
    theirs = CollectorRegistry()
    _record(Counter("t_requests", "Requests.", ["model", "code"], registry=theirs),
            Gauge("t_in_flight", "In flight.", ["endpoint"], registry=theirs),
            Histogram("t_seconds", "Seconds.", ["model", "stream"], buckets=BOUNDS, registry=theirs))
    ours = CollectorRegistry()
    families = (Family("counter", "t_requests", "Requests.", ["model", "code"]),
                Family("gauge", "t_in_flight", "In flight.", ["endpoint"]),
                Family("histogram", "t_seconds", "Seconds.", ["model", "stream"], BOUNDS))
    for family in families:
        ours.register(family)
    _record(*families)
    return _exposition(ours), _exposition(theirs)


def test_families_render_as_prometheus_client_renders_the_same_updates() -> None:
    ours, theirs = _both_ways()
    assert ours == theirs
    assert 't_seconds_bucket{le="0.005",model="m",stream="false"} 2.0' in ours  # le is inclusive


def test_wrong_label_count_is_refused_and_names_clash_as_in_prometheus_client() -> None:
    family = Family("counter", "t_x", "X.", ["a", "b"])
    with pytest.raises(ValueError, match="takes labels"):
        family.labels("only-one")
    registry = CollectorRegistry()
    registry.register(family)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("t_x", "X again.", registry=registry)


def test_counters_refuse_to_go_down_and_created_series_follow_prometheus_clients_switch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counter = Family("counter", "t_down", "X.", ["a"]).labels("v")
    with pytest.raises(ValueError, match="non-negative"):
        counter.inc(-1)
    monkeypatch.setattr(prometheus_metrics, "_use_created", False)  # PROMETHEUS_DISABLE_CREATED_SERIES=true
    ours, theirs = _both_ways()
    assert ours == theirs and "_created" not in ours
