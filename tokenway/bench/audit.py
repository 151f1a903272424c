"""The validity audit printed with every run, and the check against the seeds' targets.

Each check says whether a client-side artefact (or a server behaviour that changes what the
numbers mean) was present, how big it was, and what to do about it. Any WARN makes the run WARN.
"""

from __future__ import annotations

from typing import Any

from tokenway.bench.loadgen import RunResult
from tokenway.bench.metrics import describe
from tokenway.bench.tokens import method as client_token_method

ZERO_GAP_WARN = 0.05
LOOP_LAG_FLOOR_MS = 5.0
SCHEDULE_LAG_WARN_MS = 10.0
TOKEN_DISAGREE_REL = 0.25
TOKEN_DISAGREE_WARN = 0.10
EARLY_STOP_WARN = 0.05
ERROR_RATE_WARN = 0.01
MIN_SAMPLES = 100

# The seeds' targets (docs: DESIGN.md); overridable with --targets.
DEFAULT_TARGETS = {"ttft_p99_ms": 500.0, "tpot_p99_ms": 50.0, "output_tok_s": 1000.0, "concurrency": 100.0}


def _check(name: str, ok: bool, value: Any, detail: str) -> dict[str, Any]:
    return {"name": name, "status": "PASS" if ok else "WARN", "value": value, "detail": detail}


def audit(result: RunResult, summary: dict[str, Any]) -> dict[str, Any]:
    """Run every validity check on one run; returns {"verdict", "checks"}."""
    ok = [r for r in result.records if not r.warmup and r.ok]
    checks = []

    zero = pairs = 0
    for r in ok:
        z, p = r.zero_gap_pairs()
        zero, pairs = zero + z, pairs + p
    share = zero / pairs if pairs else 0.0
    checks.append(
        _check(
            "coalesced_chunks",
            share <= ZERO_GAP_WARN,
            round(share, 4),
            f"{zero}/{pairs} consecutive token events arrived in the same read. "
            + (
                "Above 5%: a proxy or the server is buffering the stream, or the client is late reading it; "
                "ITL percentiles then show bursts, not generation speed."
                if share > ZERO_GAP_WARN
                else "Streams arrived event by event."
            ),
        )
    )

    lag = describe(result.loop_lag)
    p99_lag = lag.get("p99", 0.0)
    itl_p50 = summary["itl_ms"].get("p50", 0.0)
    limit = max(LOOP_LAG_FLOOR_MS, 0.1 * itl_p50)
    checks.append(
        _check(
            "event_loop_lag",
            p99_lag <= limit,
            {"p50_ms": lag.get("p50"), "p99_ms": p99_lag, "max_ms": lag.get("max")},
            f"p99 lateness of a {len(result.loop_lag)}-tick probe: {p99_lag:.2f} ms (limit {limit:.1f} ms). "
            + (
                "The client's event loop is saturated: timestamps are late by up to this much; "
                "lower the load per client process or run several."
                if p99_lag > limit
                else "The client kept up."
            ),
        )
    )

    if "schedule_lag_ms" in summary:
        sl = summary["schedule_lag_ms"]
        p99 = sl.get("p99", 0.0)
        checks.append(
            _check(
                "schedule_lag",
                p99 <= SCHEDULE_LAG_WARN_MS,
                {"p50_ms": sl.get("p50"), "p99_ms": p99, "max_ms": sl.get("max")},
                f"Open-loop sends left p99 {p99:.2f} ms after their scheduled time. "
                + (
                    "Coordinated omission: the offered rate was not delivered (concurrency cap or busy "
                    "client), so latencies under-report what users arriving on schedule would see."
                    if p99 > SCHEDULE_LAG_WARN_MS
                    else "Requests went out on schedule."
                ),
            )
        )

    with_usage = [r for r in ok if r.server_tokens is not None]
    if with_usage:
        off = []
        for r in with_usage:
            server = r.server_tokens or 0
            if abs(r.client_tokens - server) > TOKEN_DISAGREE_REL * max(1, server):
                off.append(r)
        share_off = len(off) / len(with_usage)
        checks.append(
            _check(
                "token_count_agreement",
                share_off <= TOKEN_DISAGREE_WARN,
                round(share_off, 4),
                f"{len(off)}/{len(with_usage)} requests: server usage and client count "
                f"({client_token_method()}) differ by > {TOKEN_DISAGREE_REL:.0%}; output tokens are "
                "server usage: "
                + (
                    "a large gap means the server's usage or the stream is suspect."
                    if share_off > TOKEN_DISAGREE_WARN
                    else "they agree."
                ),
            )
        )
    elif ok:
        checks.append(
            _check(
                "token_count_agreement",
                False,
                None,
                f"The server sent no usage (stream_options.include_usage); output tokens are client counts "
                f"({client_token_method()}), so TPOT and throughput carry that method's error.",
            )
        )

    early = [r for r in ok if r.output_tokens < r.max_tokens]
    share_early = len(early) / len(ok) if ok else 0.0
    checks.append(
        _check(
            "stopped_before_max_tokens",
            share_early <= EARLY_STOP_WARN,
            round(share_early, 4),
            f"{len(early)}/{len(ok)} requests ended before max_tokens. "
            + (
                "The output-length distribution is not the one configured; use --ignore-eos or --min-tokens "
                "where the server supports them."
                if share_early > EARLY_STOP_WARN
                else "Output lengths as asked."
            ),
        )
    )

    rate = summary["error_rate"]
    checks.append(
        _check(
            "errors",
            rate <= ERROR_RATE_WARN,
            summary["errors"],
            f"error rate {rate:.2%}; latencies are over successful requests only.",
        )
    )

    n = len(ok)
    checks.append(
        _check(
            "sample_size",
            n >= MIN_SAMPLES,
            n,
            f"{n} completed requests"
            + ("." if n >= MIN_SAMPLES else f"; p99 and above from < {MIN_SAMPLES} samples are extrapolated."),
        )
    )
    verdict = "PASS" if all(c["status"] == "PASS" for c in checks) else "WARN"
    return {"verdict": verdict, "checks": checks}


def check_targets(summary: dict[str, Any], targets: dict[str, float]) -> list[dict[str, Any]]:
    """Compare one run with the targets; each row says met or not."""
    measured = {
        "ttft_p99_ms": summary["ttft_ms"].get("p99"),
        "tpot_p99_ms": summary["tpot_ms"].get("p99"),
        "output_tok_s": summary["output_throughput"],
        "concurrency": float(summary["concurrency"]["peak"]),
    }
    rows = []
    for name, goal in targets.items():
        value = measured.get(name)
        lower_is_better = name.endswith("_ms")
        met = value is not None and value == value and (value < goal if lower_is_better else value > goal)
        if name == "concurrency" and summary["error_rate"] > ERROR_RATE_WARN:
            met = False  # concurrency only counts when it was served, not refused
        rows.append(
            {
                "target": name,
                "goal": f"{'<' if lower_is_better else '>'} {goal:g}",
                "value": value,
                "met": met,
            }
        )
    return rows
