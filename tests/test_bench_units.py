"""Unit tests of the bench's pure parts: statistics, arrival processes, workloads, record parsing."""

from __future__ import annotations

import math
import random

import orjson
import pytest

from tokenway.bench.client import Endpoint, Exchange, build_payload
from tokenway.bench.loadgen import LoadShape, arrival_times
from tokenway.bench.metrics import SLO, concurrency_profile, describe, percentile
from tokenway.bench.parallel import worker_shape
from tokenway.bench.records import RequestRecord, _share, build_record
from tokenway.bench.workload import LengthDist, load_sharegpt, synthetic


def _ks_exponential(samples: list[float], rate: float) -> float:
    xs = sorted(samples)
    n = len(xs)
    return max(
        max((i + 1) / n - (1 - math.exp(-rate * x)), (1 - math.exp(-rate * x)) - i / n) for i, x in enumerate(xs)
    )


def _gaps(shape: LoadShape, n: int) -> list[float]:
    it = arrival_times(shape)
    times = [next(it) for _ in range(n)]
    return [b - a for a, b in zip([0.0, *times], times, strict=False)]


def test_percentile_matches_numpy_linear_definition() -> None:
    vals = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert percentile(vals, 50) == 3.0
    assert percentile(vals, 90) == pytest.approx(7.6)  # numpy.percentile(vals, 90)
    assert percentile(vals, 99.9) == pytest.approx(9.976)
    d = describe([0.001, 0.002, 0.003])
    assert d["mean"] == pytest.approx(2.0) and d["std"] == pytest.approx(math.sqrt(2 / 3))
    assert describe([]) == {"count": 0}


def test_poisson_arrivals_have_rate_and_exponential_gaps() -> None:
    gaps = _gaps(LoadShape(rate=50.0, seed=7, num_requests=1), 4000)
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 50, rel=0.05)
    # Kolmogorov-Smirnov against Exp(50): critical value at alpha = 0.01 is 1.63 / sqrt(n).
    assert _ks_exponential(gaps, 50.0) < 1.63 / math.sqrt(len(gaps))


@pytest.mark.parametrize("k", [0.5, 4.0])
def test_gamma_arrivals_keep_rate_and_change_burstiness(k: float) -> None:
    gaps = _gaps(LoadShape(rate=20.0, arrival="gamma", burstiness=k, seed=3, num_requests=1), 4000)
    mean = sum(gaps) / len(gaps)
    cv2 = sum((g - mean) ** 2 for g in gaps) / len(gaps) / mean**2
    assert mean == pytest.approx(1 / 20, rel=0.06)
    assert cv2 == pytest.approx(1 / k, rel=0.15)  # gamma(k): squared coefficient of variation 1/k


def test_ramp_up_rate_grows_linearly_then_holds() -> None:
    it = arrival_times(LoadShape(rate=100.0, arrival="constant", ramp_up_s=2.0, num_requests=1))
    times = [next(it) for _ in range(400)]
    in_first = sum(1 for t in times if t < 1.0)
    in_second = sum(1 for t in times if 1.0 <= t < 2.0)
    in_third = sum(1 for t in times if 2.0 <= t < 3.0)
    assert in_first == pytest.approx(25, abs=2)  # integral of 100*t/2 over [0, 1]
    assert in_second == pytest.approx(75, abs=2)
    assert in_third == pytest.approx(100, abs=2)


def test_infinite_rate_sends_everything_at_once() -> None:
    it = arrival_times(LoadShape(rate=math.inf, num_requests=1))
    assert [next(it) for _ in range(3)] == [0.0, 0.0, 0.0]


def test_length_dist_and_synthetic_workload_are_deterministic() -> None:
    d = LengthDist.parse("100,30,50,120")
    rng = random.Random(1)
    samples = [d.sample(rng) for _ in range(500)]
    assert min(samples) >= 50 and max(samples) <= 120
    with pytest.raises(ValueError, match="MEAN"):
        LengthDist.parse("1,2,3,4,5")
    w = synthetic(LengthDist(20), LengthDist(8), seed=5, turns=2, prefix_groups=3, prefix_len=10)
    assert w(4) == w(4) and w(4) != w(5)
    assert len(w(0).turns) == 2 and len(w(0).turns[0].prompt.split()) == 20
    assert len({w(i).system for i in range(40)}) == 3


def test_sample_dataset_ships_and_loads() -> None:
    single, n = load_sharegpt(None)
    multi, _ = load_sharegpt(None, multi_turn=True)
    assert n >= 10
    assert all(len(single(i).turns) == 1 for i in range(n))
    assert max(len(multi(i).turns) for i in range(n)) >= 3


def test_slo_parse_and_short_requests() -> None:
    slo = SLO.parse(["ttft:500", "tpot:50,e2el:900"])
    assert dict(slo.limits) == {"ttft": 500.0, "tpot": 50.0, "e2el": 900.0}
    with pytest.raises(ValueError, match="ttft:MS"):
        SLO.parse(["latency:3"])


def test_share_splits_usage_over_events() -> None:
    assert _share(10, [1, 1, 3, 5]) == [1, 1, 3, 5]
    assert sum(_share(7, [2, 2, 2])) == 7
    assert _share(2, [1, 1, 1]) == [1, 1, 1]  # server counted fewer tokens than events


def _sse(*objs: bytes) -> list[tuple[float, bytes]]:
    return [(0.1 * (i + 1), b"data: " + o) for i, o in enumerate(objs)]


def test_record_ttft_skips_role_only_events_and_reads_reasoning() -> None:
    ex = Exchange(start=0.0, end=1.0, status=200)
    ex.events = _sse(
        b'{"choices":[{"delta":{"role":"assistant","content":""}}]}',
        b'{"choices":[{"delta":{"reasoning_content":"hmm"}}]}',
        b'{"choices":[{"delta":{"content":"hi"},"finish_reason":"stop"}]}',
        b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}',
        b"[DONE]",
    )
    rec = build_record(ex, RequestRecord(0, 0, 0, 2, 0.0, 0.0))
    assert rec.ok and rec.ttft == pytest.approx(0.2) and rec.e2el == pytest.approx(0.4)
    assert rec.output_tokens == 2 and rec.output_source == "usage" and rec.input_tokens == 3
    assert rec.tpot == pytest.approx(0.2) and rec.finish_reason == "stop"


def test_record_classifies_stream_errors_and_bad_json() -> None:
    ex = Exchange(start=0.0, end=1.0, status=200)
    ex.events = _sse(b'{"error":{"message":"boom","type":"server_error"}}')
    assert build_record(ex, RequestRecord(0, 0, 0, 2, 0.0, 0.0)).error == "stream_error"
    ex.events = _sse(b"{nope")
    assert build_record(ex, RequestRecord(0, 0, 0, 2, 0.0, 0.0)).error == "bad_json"
    ex.events = _sse(b"[DONE]")
    assert build_record(ex, RequestRecord(0, 0, 0, 2, 0.0, 0.0)).error == "no_tokens"


def test_concurrency_profile_counts_overlap() -> None:
    recs = [RequestRecord(i, i, 0, 1, start=s, end=e) for i, (s, e) in enumerate([(0, 4), (1, 3), (2, 5), (6, 7)])]
    peak, mean = concurrency_profile(recs, 0.0, 8.0)
    assert peak == 3
    assert mean == pytest.approx((4 + 2 + 3 + 1) / 8)


def test_worker_shares_add_up() -> None:
    closed = LoadShape(concurrency=5, num_requests=11, warmup_requests=3, seed=1)
    shares = [worker_shape(closed, k, 3) for k in range(3)]
    assert [s.concurrency for s in shares] == [2, 2, 1]
    assert sum(s.num_requests or 0 for s in shares) == 11 and sum(s.warmup_requests for s in shares) == 3
    assert len({s.seed for s in shares}) == 3  # independent arrival streams
    open_loop = worker_shape(LoadShape(rate=30.0, max_concurrency=4, duration_s=5.0), 1, 3)
    assert open_loop.rate == 10.0 and open_loop.max_concurrency == 1 and open_loop.duration_s == 5.0


def test_a_payload_that_does_not_stream_carries_no_stream_options() -> None:
    # OpenAI (and the gateway) refuse stream_options on a request that does not stream: `--extra-body
    # '{"stream": false}'` got every request of a JSON load refused with a 400.
    messages = [{"role": "user", "content": "hi"}]
    streamed = orjson.loads(build_payload(Endpoint("http://x/v1", "m"), messages, 6))
    assert streamed["stream"] is True and streamed["stream_options"] == {"include_usage": True}
    plain = orjson.loads(build_payload(Endpoint("http://x/v1", "m", extra_body=(("stream", False),)), messages, 6))
    assert plain["stream"] is False and "stream_options" not in plain
    asked = Endpoint("http://x/v1", "m", extra_body=(("stream", False), ("stream_options", {"x": 1})))
    assert orjson.loads(build_payload(asked, messages, 6))["stream_options"] == {"x": 1}  # what the user asked for
