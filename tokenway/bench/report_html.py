"""The self-contained HTML report: tables and inline SVG plots, no scripts, no external URLs."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from tokenway.bench.metrics import PERCENTILES
from tokenway.plots import Series, line_chart

CSS = """body{font-family:sans-serif;margin:24px;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.PASS,.met{color:#17702a;font-weight:bold}
.WARN,.MISSED{color:#b3261e;font-weight:bold}.plots{display:flex;flex-wrap:wrap;gap:12px}
code{background:#f4f4f4;padding:1px 4px}"""


def _cdf(run: dict[str, Any], metric: str) -> tuple[list[float], list[float]]:
    rows = [r for r in run["requests"] if not r["warmup"] and r["error"] is None]
    if metric == "itl_ms":
        vals = sorted(v for r in rows for v in r.get("itl_ms") or [])
    else:
        vals = sorted(r[metric] for r in rows if r.get(metric) is not None)
    n = len(vals)
    return vals, [(i + 1) / n for i in range(n)]


def _num(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return f"{v:,.2f}" if isinstance(v, float) else escape(str(v))


def _latency_table(s: dict[str, Any]) -> str:
    cols = ["count", "mean", "std", "min"] + [f"p{p:g}" for p in PERCENTILES] + ["max"]
    head = "".join(f"<th>{c}</th>" for c in cols)
    rows = []
    for name, key in (
        ("TTFT", "ttft_ms"),
        ("TPOT", "tpot_ms"),
        ("ITL", "itl_ms"),
        ("E2EL", "e2el_ms"),
        ("Schedule lag", "schedule_lag_ms"),
        ("TTFT from sched.", "ttft_from_schedule_ms"),
        ("E2EL from sched.", "e2el_from_schedule_ms"),
    ):
        if key in s:
            rows.append(
                f"<tr><th class=l>{name} (ms)</th>" + "".join(f"<td>{_num(s[key].get(c))}</td>" for c in cols) + "</tr>"
            )
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _run_section(run: dict[str, Any]) -> str:
    s, a = run["summary"], run["audit"]
    req = s["requests"]
    facts = [
        ("Completed / failed / warm-up", f"{req['completed']} / {req['failed']} / {req['warmup']}"),
        ("Errors", ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "none"),
        ("Wall time (s)", _num(s["duration_s"])),
        ("Request throughput (req/s)", _num(s["request_throughput"])),
        ("Output token throughput (tok/s)", _num(s["output_throughput"])),
        ("Total token throughput (tok/s)", _num(s["total_token_throughput"])),
        (
            "Output tokens counted by",
            ", ".join(f"{k}: {v}" for k, v in s["output_token_source"].items()) or "-",
        ),
        ("In flight, peak / mean", f"{s['concurrency']['peak']} / {s['concurrency']['mean']:.1f}"),
    ]
    if "goodput" in s:
        g = s["goodput"]
        slos = " ".join(f"{k} ≤ {v:g} ms" for k, v in g["slo_ms"].items())
        facts.append((f"Goodput ({slos})", f"{g['req_s']:.2f} req/s ({g['share']:.1%})"))
    fact_rows = "".join(f"<tr><th class=l>{escape(k)}</th><td class=l>{escape(str(v))}</td></tr>" for k, v in facts)
    checks = "".join(
        f"<tr><td class=l>{escape(c['name'])}</td><td class={c['status']}>{c['status']}</td>"
        f"<td class=l>{escape(c['detail'])}</td></tr>"
        for c in a["checks"]
    )
    targets = "".join(
        f"<tr><td class=l>{escape(t['target'])}</td><td>{escape(t['goal'])}</td><td>{_num(t['value'])}</td>"
        f"<td class={'met' if t['met'] else 'MISSED'}>{'met' if t['met'] else 'MISSED'}</td></tr>"
        for t in run["targets"]
    )
    tl = s["timeline"]
    plots = [
        line_chart(
            [("output tok/s", tl["t"], tl["output_tok_s"])],
            "Output throughput over time",
            "seconds since measurement start",
            "tokens/s",
            ymin=0.0,
        )
    ]
    plots += [
        line_chart([(s["label"], *_cdf(run, m))], f"{n} CDF", f"{n} (ms)", "fraction of samples", ymin=0.0)
        for n, m in (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2EL", "e2el_ms"))
    ]
    return (
        f"<h2>{escape(s['label'])}</h2><table>{fact_rows}</table>{_latency_table(s)}"
        f"<h3>Validity audit: <span class={a['verdict']}>{a['verdict']}</span></h3>"
        f"<table><tr><th class=l>check</th><th>status</th><th class=l>detail</th></tr>{checks}</table>"
        f"<h3>Targets</h3><table><tr><th class=l>target</th><th>goal</th><th>value</th><th></th></tr>"
        f"{targets}</table><div class=plots>{''.join(plots)}</div>"
    )


def _sweep_section(runs: list[dict[str, Any]]) -> str:
    pts = sorted(runs, key=lambda r: r["summary"]["request_throughput"])
    x = [r["summary"]["request_throughput"] for r in pts]

    def series(metric: str) -> list[Series]:
        return [(f"p{p}", x, [r["summary"][metric].get(f"p{p}", float("nan")) for r in pts]) for p in (50, 99)]

    plots = [
        line_chart(series("ttft_ms"), "TTFT vs load", "achieved requests/s", "TTFT (ms)", markers=True, ymin=0.0),
        line_chart(series("tpot_ms"), "TPOT vs load", "achieved requests/s", "TPOT (ms)", markers=True, ymin=0.0),
        line_chart(
            [("tok/s", x, [r["summary"]["output_throughput"] for r in pts])],
            "Output throughput vs load",
            "achieved requests/s",
            "output tokens/s",
            markers=True,
            ymin=0.0,
        ),
        line_chart(
            [(r["summary"]["label"], *_cdf(r, "ttft_ms")) for r in pts],
            "TTFT CDF by load",
            "TTFT (ms)",
            "fraction",
            ymin=0.0,
        ),
    ]
    return f"<h2>Sweep</h2><div class=plots>{''.join(plots)}</div>"


def render(doc: dict[str, Any]) -> str:
    """The report as one HTML string."""
    runs = doc["runs"]
    cfg = doc.get("config", {})
    defs = "".join(f"<li><b>{escape(k)}</b>: {escape(v)}</li>" for k, v in doc["definitions"].items())
    body = [
        f"<h1>tokenway bench</h1><p>{escape(str(cfg.get('url', '')))} &middot; model "
        f"<code>{escape(str(cfg.get('model', '')))}</code> &middot; {escape(doc['created'])} &middot; "
        f"client token counting: {escape(doc['client_token_method'])}</p>"
    ]
    if len(runs) > 1:
        body.append(_sweep_section(runs))
    body += [_run_section(r) for r in runs]
    body.append(f"<h2>Definitions (vLLM bench serve)</h2><ul>{defs}</ul>")
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>tokenway bench report</title>"
        f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>"
    )


def write_html(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(doc), encoding="utf-8")
