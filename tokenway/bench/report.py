"""Results: the JSON document (summary, audit, per-request records), CSV and the console summary.

The JSON format is documented in docs/bench-results-format.md; `compare` reads it back.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import math
from pathlib import Path
from typing import Any, TextIO

import orjson

from tokenway.bench.audit import audit, check_targets
from tokenway.bench.loadgen import RunResult
from tokenway.bench.metrics import DEFINITIONS, PERCENTILES, SLO, summarize
from tokenway.bench.records import RequestRecord
from tokenway.bench.tokens import method as client_token_method

FORMAT_VERSION = 1
CSV_FIELDS = (
    "run",
    "index",
    "session",
    "turn",
    "group",
    "warmup",
    "status",
    "error",
    "start_s",
    "schedule_lag_ms",
    "ttft_ms",
    "tpot_ms",
    "e2el_ms",
    "itl_mean_ms",
    "input_tokens",
    "output_tokens",
    "output_source",
    "server_tokens",
    "client_tokens",
    "max_tokens",
    "finish_reason",
)


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000.0, 4)


def request_row(rec: RequestRecord, t0: float, *, detailed: bool) -> dict[str, Any]:
    """One per-request record as stored in JSON (times in ms, start relative to run start)."""
    itl = rec.itls()
    row: dict[str, Any] = {
        "index": rec.index,
        "session": rec.session,
        "turn": rec.turn,
        "group": rec.group,
        "warmup": rec.warmup,
        "status": rec.status,
        "error": rec.error,
        "error_detail": rec.error_detail or None,
        "start_s": round(rec.start - t0, 6),
        "schedule_lag_ms": _ms(rec.start - rec.scheduled) if rec.scheduled is not None else None,
        "ttft_ms": _ms(rec.ttft),
        "tpot_ms": _ms(rec.tpot),
        "e2el_ms": _ms(rec.e2el),
        "itl_mean_ms": _ms(sum(itl) / len(itl)) if itl else None,
        "input_tokens": rec.input_tokens,
        "output_tokens": rec.output_tokens,
        "output_source": rec.output_source,
        "server_tokens": rec.server_tokens,
        "client_tokens": rec.client_tokens,
        "max_tokens": rec.max_tokens,
        "finish_reason": rec.finish_reason,
        "itl_ms": [round(g * 1000.0, 3) for g in itl],
    }
    if detailed:
        row["token_offsets_ms"] = [round((t - rec.start) * 1000.0, 3) for t in rec.token_times]
        row["event_tokens"] = rec.event_tokens
    return row


def run_document(result: RunResult, slo: SLO | None, targets: dict[str, float], *, detailed: bool) -> dict[str, Any]:
    """Summary + audit + target check + per-request rows for one run."""
    summary = summarize(result, slo)
    return {
        # JSON has no infinity: an all-at-once rate is written as the string "inf".
        "shape": {k: ("inf" if v == math.inf else v) for k, v in dataclasses.asdict(result.shape).items()},
        "started_at": dt.datetime.fromtimestamp(result.wall_clock_start, dt.UTC).isoformat(),
        "summary": summary,
        "audit": audit(result, summary),
        "targets": check_targets(summary, targets),
        "requests": [request_row(r, result.t0, detailed=detailed) for r in result.records],
    }


def document(runs: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """The whole results file."""
    return {
        "tool": "tokenway bench",
        "format_version": FORMAT_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(),
        "config": config,
        "definitions": DEFINITIONS,
        "client_token_method": client_token_method(),
        "runs": runs,
    }


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def load_json(path: str | Path) -> dict[str, Any]:
    """Read a results file, checking it is one."""
    doc = orjson.loads(Path(path).read_bytes())
    if not isinstance(doc, dict) or doc.get("tool") != "tokenway bench" or "runs" not in doc:
        raise ValueError(f"{path}: not a tokenway bench results file (write one with --out or --json)")
    return doc


def write_csv(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for run in doc["runs"]:
            for row in run["requests"]:
                writer.writerow({"run": run["summary"]["label"], **row})


def _fmt(v: Any, width: int = 9) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-".rjust(width)
    return f"{v:{width}.2f}" if isinstance(v, float) else str(v).rjust(width)


def print_run(run: dict[str, Any], endpoint: str, out: TextIO) -> None:
    """The console summary of one run, with its audit, targets and the metric definitions."""
    s = run["summary"]
    req = s["requests"]
    w = out.write
    w(f"\n{' tokenway bench: ' + s['label'] + ' ':=^78}\n")
    w(f"Endpoint: {endpoint}\n")
    errors = ", ".join(f"{k}={v}" for k, v in s["errors"].items()) or "none"
    w(f"Requests: {req['completed']} completed, {req['failed']} failed ({errors}); {req['warmup']} warm-up excluded\n")
    w(f"Wall time: {s['duration_s']:.2f} s\n")
    w(f"Request throughput:      {s['request_throughput']:10.2f} req/s\n")
    names = {"usage": "server usage", "client": "client count"}
    src = ", ".join(f"{names.get(k, k)} for {v}" for k, v in s["output_token_source"].items()) or "-"
    w(f"Output token throughput: {s['output_throughput']:10.2f} tok/s  (token counts: {src} requests)\n")
    w(f"Total token throughput:  {s['total_token_throughput']:10.2f} tok/s\n")
    if "goodput" in s:
        g = s["goodput"]
        slos = " ".join(f"{k}<={v:g}ms" for k, v in g["slo_ms"].items())
        w(f"Goodput [{slos}]: {g['req_s']:.2f} req/s ({g['share']:.1%} of requests)\n")
    w(f"In flight: peak {s['concurrency']['peak']}, mean {s['concurrency']['mean']:.1f}\n")
    cols = ["mean", "std", "min"] + [f"p{p:g}" for p in PERCENTILES] + ["max"]
    w(f"{'(ms)':<17}{'n':>7}" + "".join(c.rjust(9) for c in cols) + "\n")
    rows = [
        ("TTFT", "ttft_ms"),
        ("TPOT", "tpot_ms"),
        ("ITL", "itl_ms"),
        ("E2EL", "e2el_ms"),
        ("Schedule lag", "schedule_lag_ms"),
        ("TTFT from sched.", "ttft_from_schedule_ms"),
        ("E2EL from sched.", "e2el_from_schedule_ms"),
    ]
    for name, key in rows:
        if key in s:
            d = s[key]
            w(f"{name:<17}{d.get('count', 0):>7}" + "".join(_fmt(d.get(c)) for c in cols) + "\n")
    a = run["audit"]
    w(f"Validity audit: {a['verdict']}\n")
    for c in a["checks"]:
        w(f"  [{c['status']}] {c['name']}: {c['detail']}\n")
    w("Targets:\n")
    for t in run["targets"]:
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        w(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']} {t['goal']}: {value}\n")


def print_definitions(out: TextIO) -> None:
    out.write("Definitions (vLLM bench serve):\n")
    for k, v in DEFINITIONS.items():
        out.write(f"  {k}: {v}\n")


def print_sweep(runs: list[dict[str, Any]], out: TextIO) -> None:
    """One line per sweep point: load, throughput and latency percentiles."""
    out.write(f"\n{' sweep ':=^78}\n")
    out.write(
        f"{'load':<34}{'req/s':>8}{'tok/s':>9}{'TTFTp50':>9}{'TTFTp99':>9}{'TPOTp50':>9}{'TPOTp99':>9}{'audit':>7}\n"
    )
    for run in runs:
        s = run["summary"]
        out.write(
            f"{s['label']:<34}{s['request_throughput']:8.2f}{s['output_throughput']:9.1f}"
            f"{_fmt(s['ttft_ms'].get('p50'))}{_fmt(s['ttft_ms'].get('p99'))}"
            f"{_fmt(s['tpot_ms'].get('p50'))}{_fmt(s['tpot_ms'].get('p99'))}{run['audit']['verdict']:>7}\n"
        )
