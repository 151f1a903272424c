"""`tokenway bench compare A.json B.json`: differences with bootstrap confidence intervals.

Resampling is over requests, not over individual token gaps: gaps within one request are
correlated, so resampling them independently would give intervals that are too narrow.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any, TextIO

import orjson

from tokenway.bench.metrics import percentile
from tokenway.bench.report import load_json

STATS = ("p50", "p90", "p99")
METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms")
# Pooled ITL resamples cost O(total gaps) each; cap the work so compare stays interactive.
ITL_WORK_BUDGET = 10_000_000


def _stat(values: list[float], name: str) -> float:
    if name == "mean":
        return sum(values) / len(values) if values else float("nan")
    return percentile(values, float(name[1:]))


def _groups(run: dict[str, Any], metric: str) -> list[list[float]]:
    rows = [r for r in run["requests"] if not r["warmup"] and r["error"] is None]
    if metric == "itl_ms":
        return [r["itl_ms"] for r in rows if r.get("itl_ms")]
    return [[r[metric]] for r in rows if r.get(metric) is not None]


def _resample(groups: list[list[float]], rng: random.Random) -> list[float]:
    picked = rng.choices(groups, k=len(groups))
    return sorted(v for g in picked for v in g)


def bootstrap(
    a: list[list[float]], b: list[list[float]], stats: tuple[str, ...], n: int, confidence: float, seed: int
) -> dict[str, dict[str, Any]]:
    """Point estimates and percentile-bootstrap CIs for each stat of A, B and B - A."""
    rng = random.Random(seed)
    pooled_a = sorted(v for g in a for v in g)
    pooled_b = sorted(v for g in b for v in g)
    draws: dict[str, list[tuple[float, float]]] = {s: [] for s in stats}
    for _ in range(n):
        ra, rb = _resample(a, rng), _resample(b, rng)
        for s in stats:
            draws[s].append((_stat(ra, s), _stat(rb, s)))
    lo_q, hi_q = (1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100
    out: dict[str, dict[str, Any]] = {}
    for s in stats:
        va, vb = _stat(pooled_a, s), _stat(pooled_b, s)
        diffs = sorted(y - x for x, y in draws[s])
        ci_a = sorted(x for x, _ in draws[s])
        ci_b = sorted(y for _, y in draws[s])
        lo, hi = percentile(diffs, lo_q), percentile(diffs, hi_q)
        out[s] = {
            "a": va,
            "b": vb,
            "diff": vb - va,
            "diff_pct": (vb - va) / va * 100 if va else None,
            "diff_ci": [lo, hi],
            "a_ci": [percentile(ci_a, lo_q), percentile(ci_a, hi_q)],
            "b_ci": [percentile(ci_b, lo_q), percentile(ci_b, hi_q)],
            "significant": lo > 0 or hi < 0,
            "resamples": n,
        }
    return out


def compare_runs(
    run_a: dict[str, Any],
    run_b: dict[str, Any],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare two runs from results files; latencies in ms, B - A (positive = B slower)."""
    result: dict[str, Any] = {
        "a": run_a["summary"]["label"],
        "b": run_b["summary"]["label"],
        "confidence": confidence,
        "metrics": {},
    }
    for metric in METRICS:
        ga, gb = _groups(run_a, metric), _groups(run_b, metric)
        if not ga or not gb:
            continue
        size = sum(len(g) for g in ga) + sum(len(g) for g in gb)
        n = min(resamples, max(100, ITL_WORK_BUDGET // max(1, size)))
        result["metrics"][metric] = bootstrap(ga, gb, ("mean", *STATS), n, confidence, seed)
    sa, sb = run_a["summary"], run_b["summary"]
    result["throughput"] = {
        k: {"a": sa[k], "b": sb[k], "ratio": sb[k] / sa[k] if sa[k] else None}
        for k in ("request_throughput", "output_throughput")
    }
    return result


def print_comparison(cmp: dict[str, Any], out: TextIO) -> None:
    w = out.write
    w(f"A = {cmp['a']}\nB = {cmp['b']}\n")
    w(f"{'metric':<14}{'A':>10}{'B':>10}{'B-A':>10}{'B-A %':>8}  {cmp['confidence']:.0%} CI of B-A\n")
    for metric, stats in cmp["metrics"].items():
        for s, v in stats.items():
            pct = "-" if v["diff_pct"] is None else f"{v['diff_pct']:+.1f}"
            flag = "  *" if v["significant"] else ""
            w(
                f"{metric[:-3] + ' ' + s:<14}{v['a']:10.2f}{v['b']:10.2f}{v['diff']:+10.2f}{pct:>8}"
                f"  [{v['diff_ci'][0]:+.2f}, {v['diff_ci'][1]:+.2f}]{flag}\n"
            )
    for k, v in cmp["throughput"].items():
        ratio = "-" if v["ratio"] is None else f"x{v['ratio']:.3f}"
        w(f"{k:<24}{v['a']:10.2f}{v['b']:10.2f}  {ratio}\n")
    w("* = the interval excludes 0: a real difference at this confidence (resampling requests).\n")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="tokenway bench compare",
        description="Compare two results files with bootstrap confidence intervals.",
    )
    p.add_argument("a", help="baseline results.json")
    p.add_argument("b", help="candidate results.json")
    p.add_argument("--run-a", type=int, default=0, help="which run of A (sweeps hold several)")
    p.add_argument("--run-b", type=int, default=0, help="which run of B")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the comparison here")
    args = p.parse_args(argv)
    try:
        da, db = load_json(args.a), load_json(args.b)
        run_a, run_b = da["runs"][args.run_a], db["runs"][args.run_b]
    except (OSError, ValueError, IndexError, orjson.JSONDecodeError) as exc:
        print(f"tokenway bench compare: {exc}", file=sys.stderr)
        return 2
    cmp = compare_runs(run_a, run_b, resamples=args.resamples, confidence=args.confidence, seed=args.seed)
    print_comparison(cmp, sys.stdout)
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(cmp, option=orjson.OPT_INDENT_2))
    return 0
