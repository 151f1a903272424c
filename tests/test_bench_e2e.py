"""`tokenway bench` against a scripted upstream over real sockets.

Expected values follow from the script (first token after X ms, then one token every Y ms).
Bands are one-sided where physics allows (a measured latency can only exceed the script) and
leave room above for a busy CI box; they assert what was measured, not how fast this machine is.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.bench_fakes import Script, serve
from tokenway.bench.audit import audit
from tokenway.bench.cli import main
from tokenway.bench.client import Endpoint, build_payload, make_session, send
from tokenway.bench.loadgen import LoadShape, RunResult, run
from tokenway.bench.metrics import SLO, concurrency_profile, summarize
from tokenway.bench.records import RequestRecord, build_record
from tokenway.bench.workload import LengthDist, synthetic
from tokenway.protocol import iter_sse_data

# How far above the script a measured value may land: the fake server shares this box with
# the test run and anything else on it, so it can be late; it can never be early. Exactness
# of the client itself is checked against the server's own write times (ground truth) below.
SLACK = 1.05


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with serve() as url:
        yield url


def _ep(url: str, script: Script, **kw: object) -> Endpoint:
    header = script.header().split(": ", 1)
    return Endpoint(url, "fake", headers=((header[0], header[1]),), **kw)  # type: ignore[arg-type]


async def _run(url: str, script: Script, shape: LoadShape, out_len: int = 12, **kw: object) -> RunResult:
    workload = synthetic(LengthDist(16), LengthDist(out_len), seed=1)
    return await run(_ep(url, script, **kw), workload, shape)


def _checks(result: RunResult, summary: dict) -> dict[str, dict]:
    return {c["name"]: c for c in audit(result, summary)["checks"]}


async def test_timestamps_match_server_write_times(upstream: str) -> None:
    ep = _ep(upstream, Script(ttft_ms=50, itl_ms=10))
    payload = build_payload(ep, [{"role": "user", "content": "hi"}], 20)
    async with make_session(ep, 8) as http:
        exchanges = await asyncio.gather(*(send(http, ep, payload, ep.request_headers()) for _ in range(4)))
    for ex in exchanges:
        rec = build_record(ex, RequestRecord(0, 0, 0, 20, 0.0, 0.0))
        stamped = [(t, orjson.loads(data)["x_t"]) for t, raw in ex.events for data in iter_sse_data(raw)
                   if b"x_t" in data]
        delays = sorted(arrived - written for arrived, written in stamped)
        assert delays[0] >= 0  # nothing is timestamped before the server wrote it
        assert delays[len(delays) // 2] < 0.002  # stamped on arrival, not after parsing
        writes = [w for _, w in stamped]
        true_ttft = writes[0] - ex.start
        true_tpot = (writes[-1] - writes[0]) / 19  # the last write is the usage event
        # Off by the first event's delivery time only; 6 ms allows one OS scheduling delay on a busy box.
        assert 0 <= rec.ttft - true_ttft < 0.006
        assert rec.tpot == pytest.approx(true_tpot, rel=0.03)
        itls = rec.itls()
        assert sum(itls) / len(itls) == pytest.approx((writes[19] - writes[0]) / 19, rel=0.03)


async def test_steady_stream_matches_script(upstream: str) -> None:
    script = Script(ttft_ms=100, itl_ms=20)
    result = await _run(upstream, script, LoadShape(concurrency=4, num_requests=12))
    s = summarize(result)
    assert s["requests"]["completed"] == 12 and s["errors"] == {}
    assert s["output_token_source"] == {"usage": 12}
    assert 100.0 <= s["ttft_ms"]["p50"] <= 100.0 * SLACK + 5
    # Tokens are due on an absolute schedule, so a late first token is caught up on: TPOT may
    # land below the script by the first token's lateness spread over the 11 gaps, never more.
    caught_up = (s["ttft_ms"]["mean"] - 100.0) / 11
    assert 20.0 - caught_up - 0.01 <= s["tpot_ms"]["mean"] <= 20.0 * SLACK
    assert s["itl_ms"]["p50"] == pytest.approx(20.0, rel=SLACK - 1)
    assert s["itl_ms"]["count"] == 12 * 11
    expected_e2el = 100.0 + 11 * 20.0
    assert expected_e2el <= s["e2el_ms"]["p50"] <= expected_e2el * SLACK + 5
    # Three rounds of four requests, each taking expected_e2el: 144 tokens over ~0.96 s.
    ideal = 144 / (3 * expected_e2el / 1000)
    assert ideal / SLACK <= s["output_throughput"] <= ideal * 1.001
    assert s["concurrency"]["peak"] == 4
    checks = _checks(result, s)
    assert checks["coalesced_chunks"]["status"] == "PASS"
    assert checks["stopped_before_max_tokens"]["status"] == "PASS"
    assert checks["errors"]["status"] == "PASS"


@pytest.mark.parametrize("continuous", [False, True])
async def test_merged_events_are_split_into_itls(upstream: str, continuous: bool) -> None:
    # 16 tokens, 4 per event, a token every 10 ms: events 40 ms apart, each carrying 4 tokens.
    script = Script(ttft_ms=60, itl_ms=10, tokens_per_event=4, continuous_usage=continuous)
    result = await _run(upstream, script, LoadShape(concurrency=2, num_requests=4), out_len=16)
    s = summarize(result)
    assert s["itl_ms"]["count"] == 4 * 12  # 16 tokens minus the 4 that arrived with the first event
    assert s["itl_ms"]["p50"] == pytest.approx(10.0, rel=SLACK - 1)
    # TPOT spreads the 120 ms after the first event over 15 tokens.
    assert s["tpot_ms"]["mean"] == pytest.approx(120 / 15, rel=2 * (SLACK - 1))
    assert 90.0 <= s["ttft_ms"]["p50"] <= 90 * SLACK + 5  # first event when its 4th token is due


async def test_coalesced_stream_is_flagged(upstream: str) -> None:
    result = await _run(upstream, Script(ttft_ms=30, itl_ms=5, coalesce=True), LoadShape(concurrency=2, num_requests=4))
    s = summarize(result)
    check = _checks(result, s)["coalesced_chunks"]
    assert check["status"] == "WARN" and check["value"] > 0.9


async def test_errors_are_counted_by_type(upstream: str) -> None:
    result = await _run(upstream, Script(ttft_ms=5, itl_ms=1, fail_every=3), LoadShape(concurrency=3, num_requests=9))
    s = summarize(result)
    assert s["errors"] == {"http_500": 3} and s["requests"]["completed"] == 6
    assert _checks(result, s)["errors"]["status"] == "WARN"
    # Port 9 (discard) has no listener here: every request fails to connect.
    dead = await run(
        Endpoint("http://127.0.0.1:9/v1", "fake"),
        synthetic(LengthDist(4), LengthDist(4)),
        LoadShape(concurrency=1, num_requests=2),
    )
    assert summarize(dead)["errors"] == {"connection_error": 2}


async def test_goodput_applies_slos(upstream: str) -> None:
    result = await _run(upstream, Script(ttft_ms=50, itl_ms=5), LoadShape(concurrency=2, num_requests=4))
    strict = summarize(result, SLO.parse(["ttft:20"]))["goodput"]
    loose = summarize(result, SLO.parse(["ttft:1000", "tpot:100"]))["goodput"]
    assert strict["requests"] == 0 and strict["req_s"] == 0
    assert loose["requests"] == 4 and loose["share"] == 1.0


async def test_open_loop_schedule_lag_reveals_coordinated_omission(upstream: str) -> None:
    script = Script(ttft_ms=40, itl_ms=5)
    capped = await _run(upstream, script, LoadShape(rate=40.0, max_concurrency=1, num_requests=10, seed=2), out_len=4)
    s = summarize(capped)
    assert s["schedule_lag_ms"]["count"] == 10
    # Each request holds the only slot for >= 55 ms while requests arrive every 25 ms on average.
    assert s["schedule_lag_ms"]["max"] > 100
    assert _checks(capped, s)["schedule_lag"]["status"] == "WARN"
    # Counted from the schedule, the capped run's latency includes the wait the cap caused.
    assert s["ttft_from_schedule_ms"]["max"] >= s["schedule_lag_ms"]["max"] + 40
    free = await _run(upstream, script, LoadShape(rate=20.0, num_requests=10, seed=2), out_len=4)
    assert summarize(free)["schedule_lag_ms"]["p50"] < s["schedule_lag_ms"]["p50"]


async def test_warmup_and_early_stop_and_no_usage(upstream: str) -> None:
    script = Script(ttft_ms=5, itl_ms=1, tokens=3, usage=False)
    result = await _run(upstream, script, LoadShape(concurrency=2, num_requests=4, warmup_requests=2), out_len=8)
    s = summarize(result)
    assert s["requests"] == {"measured": 4, "completed": 4, "failed": 0, "warmup": 2}
    assert s["output_token_source"] == {"client": 4}
    checks = _checks(result, s)
    assert checks["stopped_before_max_tokens"]["status"] == "WARN"
    assert checks["token_count_agreement"]["status"] == "WARN"


async def test_request_shape_multi_turn_prefix_and_options(upstream: str) -> None:
    script = Script(ttft_ms=5, itl_ms=1)
    ep = _ep(upstream, script, api_key="sk-test", ignore_eos=True, min_tokens=True)
    workload = synthetic(LengthDist(8), LengthDist(3), seed=4, turns=2, prefix_groups=2, prefix_len=6)
    result = await run(ep, workload, LoadShape(concurrency=2, num_requests=6))
    assert summarize(result)["requests"]["completed"] == 6
    async with aiohttp.ClientSession() as http, http.get(upstream.removesuffix("/v1") + "/seen") as resp:
        seen = await resp.json()
    bodies = [s["body"] for s in seen[-6:]]
    assert all(s["headers"]["Authorization"] == "Bearer sk-test" for s in seen[-6:])
    assert all(b["stream"] and b["stream_options"] == {"include_usage": True} for b in bodies)
    assert all(b["ignore_eos"] and b["min_tokens"] == b["max_tokens"] for b in bodies)
    second_turns = [b for b in bodies if len(b["messages"]) == 4]
    assert second_turns, "a second turn carries system, user, assistant, user"
    assert [m["role"] for m in second_turns[0]["messages"]] == ["system", "user", "assistant", "user"]
    assert second_turns[0]["messages"][2]["content"] == " tok tok tok"
    assert len({b["messages"][0]["content"] for b in bodies}) <= 2


def test_cli_outputs_and_compare(upstream: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def bench(name: str, itl: float) -> Path:
        out = tmp_path / name
        rc = main(
            [
                "--base-url",
                upstream,
                "--model",
                "fake",
                "-c",
                "4",
                "-n",
                "16",
                "--output-len",
                "8",
                "--input-len",
                "16",
                "-H",
                Script(ttft_ms=20, itl_ms=itl).header(),
                "--goodput",
                "ttft:500",
                "--out",
                str(out),
                "--progress",
                "off",
            ]
        )
        assert rc == 0
        return out

    a, b = bench("a", 5.0), bench("b", 10.0)
    console = capsys.readouterr().out
    assert "Validity audit" in console and "Definitions (vLLM bench serve)" in console and "Goodput" in console
    doc = json.loads((a / "results.json").read_text())
    assert doc["tool"] == "tokenway bench" and len(doc["runs"][0]["requests"]) == 16
    assert doc["runs"][0]["requests"][0]["itl_ms"]
    assert len((a / "requests.csv").read_text().strip().splitlines()) == 17
    html = (a / "report.html").read_text()
    assert html.count("<svg") >= 5
    for external in ("<script", "<link", "src=", "https://", "@import"):
        assert external not in html
    assert (
        main(
            [
                "compare",
                str(a / "results.json"),
                str(b / "results.json"),
                "--resamples",
                "200",
                "--json",
                str(tmp_path / "cmp.json"),
            ]
        )
        == 0
    )
    cmp = json.loads((tmp_path / "cmp.json").read_text())
    tpot = cmp["metrics"]["tpot_ms"]["p50"]
    assert tpot["diff"] == pytest.approx(5.0, rel=0.2) and tpot["significant"]
    assert tpot["diff_ci"][0] <= tpot["diff"] <= tpot["diff_ci"][1]


def test_cli_sweep_and_completions(upstream: str, tmp_path: Path) -> None:
    html = tmp_path / "sweep.html"
    rc = main(
        [
            "--base-url",
            upstream,
            "--model",
            "fake",
            "--api",
            "completions",
            "--sweep",
            "1",
            "--sweep-max-concurrency",
            "4",
            "-n",
            "8",
            "--output-len",
            "4",
            "--dataset",
            "sample",
            "-H",
            Script(ttft_ms=10, itl_ms=2).header(),
            "--html",
            str(html),
            "--json",
            str(tmp_path / "s.json"),
            "--progress",
            "plain",
        ]
    )
    assert rc == 0
    doc = json.loads((tmp_path / "s.json").read_text())
    labels = [r["summary"]["label"] for r in doc["runs"]]
    assert labels[:2] == ["concurrency=1", "concurrency=4"] and labels[2].startswith("rate=")
    assert all(r["summary"]["requests"]["completed"] == 8 for r in doc["runs"])
    assert "TTFT vs load" in html.read_text()


def test_cli_reports_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert "--model is required" in capsys.readouterr().err
    assert main(["--model", "m", "--goodput", "speed:3"]) == 2
    assert main(["compare", "/nonexistent/a.json", "/nonexistent/b.json"]) == 2


def test_cli_workers_split_load_across_processes(upstream: str, tmp_path: Path) -> None:
    out = tmp_path / "w.json"
    rc = main(
        [
            "--base-url",
            upstream,
            "--model",
            "fake",
            "-c",
            "4",
            "-n",
            "10",
            "--output-len",
            "4",
            "--workers",
            "2",
            "-H",
            Script(ttft_ms=20, itl_ms=2).header(),
            "--json",
            str(out),
            "--progress",
            "off",
        ]
    )
    assert rc == 0
    run_doc = json.loads(out.read_text())["runs"][0]
    assert run_doc["summary"]["requests"]["completed"] == 10
    assert run_doc["summary"]["concurrency"]["peak"] == 4
    reqs = run_doc["requests"]
    assert sorted(r["index"] for r in reqs) == list(range(10))
    assert len({r["session"] for r in reqs}) == 10  # workers send distinct sessions
    assert run_doc["summary"]["ttft_ms"]["min"] >= 20.0  # one clock across processes: never early


async def test_open_loop_sends_follow_poisson_process(upstream: str) -> None:
    rate, n = 50.0, 120
    result = await _run(upstream, Script(ttft_ms=2, itl_ms=1), LoadShape(rate=rate, num_requests=n, seed=11), out_len=2)
    starts = sorted(r.start for r in result.records)
    gaps = [b - a for a, b in itertools.pairwise([result.t0, *starts])]
    assert len(gaps) == n
    assert sum(gaps) / n == pytest.approx(1 / rate, rel=0.25)  # sampling error of a mean of 120 exponentials
    # Kolmogorov-Smirnov against Exp(rate) on the actual send times: critical value 1.63/sqrt(n) at alpha 0.01.
    xs = sorted(gaps)
    ks = max(max((i + 1) / n - (1 - math.exp(-rate * x)), (1 - math.exp(-rate * x)) - i / n) for i, x in enumerate(xs))
    assert ks < 1.63 / math.sqrt(n)


async def test_duration_ramp_up_and_warmup_seconds(upstream: str) -> None:
    script = Script(ttft_ms=30, itl_ms=5)
    shape = LoadShape(concurrency=4, duration_s=0.8, ramp_up_s=0.3, warmup_s=0.2)
    result = await _run(upstream, script, shape, out_len=4)
    # User i joins at ramp * i / users: one user alone for the first 75 ms, all four only after 225 ms.
    assert concurrency_profile(result.records, result.t0, result.t0 + 0.07)[0] == 1
    assert concurrency_profile(result.records, result.t0, result.t0 + 0.22)[0] <= 3
    assert concurrency_profile(result.records, result.t0 + 0.3, result.t0 + 0.9)[0] == 4
    measured = [r for r in result.records if not r.warmup]
    assert all(r.start - result.t0 >= 0.2 for r in measured)  # warm-up seconds excluded
    assert all(r.start < result.t0 + 0.2 + 0.8 for r in result.records)  # nothing sent after the duration
    assert summarize(result)["requests"]["warmup"] >= 1
