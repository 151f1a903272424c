"""An estimate as JSON, as a terminal table (rich) and as a self-contained HTML page with plots."""

from __future__ import annotations

import dataclasses
import math
from html import escape
from typing import Any

from tokenway.cost.catalogue import Checked
from tokenway.cost.estimate import Estimate, Plan
from tokenway.cost.pricing import Option, SelfHosted, api_option, self_hosted_option
from tokenway.cost.traffic import Traffic
from tokenway.plots import Mark, Series, line_chart, scatter_chart

PLOTTED_APIS = 5  # the cost plots draw this many API models, spread from cheapest to dearest
UNVERIFIED = "*"  # beside an option whose figures no published page confirmed; the footnote says which


def _plan(plan: Plan, traffic: Traffic) -> dict[str, Any]:
    return {
        "gpu": plan.gpu_name, "cloud": plan.cloud, "instance": plan.price.instance, "region": plan.price.region,
        "gpus_per_replica": plan.memory.gpus, "replicas": plan.on_demand.replicas(traffic),
        "per_month_on_demand": plan.on_demand.per_month(traffic), "verified": plan.on_demand.verified,
    }


def _check(figures: Checked) -> dict[str, Any]:
    source = figures.source.model_dump() if figures.source is not None else None
    return {"verified": figures.verified, "source": source, "note": figures.note}


def unverified(est: Estimate) -> list[str]:
    """What in this estimate no published page confirmed, one phrase each, for the footnote."""
    req, plan = est.request, est.plan
    found = []
    if not req.catalogue.gpus[plan.gpu_name].verified:
        found.append(f"{plan.gpu_name}'s memory, bandwidth and TFLOPS")
    if not plan.price.verified:
        found.append(f"{plan.cloud}'s {plan.gpu_name} prices ({plan.price.instance or 'no instance named'})")
    if not req.model.verified:
        found.append(f"{req.model_name}'s parameters, layers, KV heads and context")
    apis = sum(1 for o in est.options if o.kind == "api" and not o.verified)
    if apis:
        found.append(f"the list prices of the {apis} API model(s) marked {UNVERIFIED}")
    return found


def _marked(name: str, verified: bool) -> str:
    return name if verified else f"{name} {UNVERIFIED}"


def as_json(est: Estimate) -> dict[str, Any]:
    req, plan, traffic = est.request, est.plan, est.request.traffic
    mem, tp = plan.memory, plan.throughput
    return {
        "traffic": {
            "source": traffic.source, "requests_per_day": traffic.requests_per_day, "peak_rps": traffic.peak_rps,
            "peak_factor": traffic.peak_factor, "prompt_tokens": dataclasses.asdict(traffic.prompt),
            "completion_tokens": dataclasses.asdict(traffic.completion),
        },
        "model": {"name": req.model_name, **req.model.model_dump(), "dtype": req.dtype, "kv_dtype": req.kv_dtype},
        "hardware": {
            **_plan(plan, traffic), "on_demand_per_gpu_hour": plan.price.on_demand,
            "spot_per_gpu_hour": plan.price.spot, "prices_as_of": req.catalogue.prices_as_of,
            "specs_check": _check(req.catalogue.gpus[plan.gpu_name]), "price_check": _check(plan.price),
        },
        "sizing": {
            "weights_gib": mem.weights_gib, "kv_bytes_per_token": mem.kv_bytes_per_token,
            "context_tokens": mem.context_tokens, "concurrency": mem.concurrency, "kv_gib": mem.kv_gib,
            "needed_gib": mem.needed_gib, "available_gib": mem.available_gib, "gpus_per_replica": mem.gpus,
            "utilisation_target": req.utilisation,
        },
        "throughput": {
            "source": "measured" if tp.measured else "estimate", "requests_per_s": tp.requests_per_s,
            "output_tokens_per_s": tp.output_tokens_per_s, "concurrency": tp.concurrency,
            "prefill_share": tp.prefill_share, "assumptions": list(tp.assumptions),
        },
        "options": [dataclasses.asdict(o) for o in est.options],
        "alternatives": [_plan(p, traffic) for p in est.alternatives],
        "unverified": unverified(est),
    }


def _usd(v: float) -> str:
    return f"${v:,.0f}" if v >= 100 else f"${v:,.2f}" if v >= 0.1 else f"${v:.4f}"


def _break_even(option: Option, setup: SelfHosted | None, value: float | None) -> str:
    if option.kind != "api":
        return ""
    if setup is None:
        return "no price"
    return "never" if value is None else f"{value:,.0f}"


def print_table(est: Estimate) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # a pipe or a file: wide enough that the table's rows stay on one line
        console = Console(width=150)
    data = as_json(est)
    t, m, s, tp, hw = data["traffic"], data["model"], data["sizing"], data["throughput"], data["hardware"]
    console.print(f"[bold]Traffic[/] ({t['source']}): {t['requests_per_day']:,.0f} requests/day, peak "
                  f"{t['peak_rps']:.2f}/s ({t['peak_factor']:.1f} x mean); prompt tokens mean "
                  f"{t['prompt_tokens']['mean']:.0f} (p95 {t['prompt_tokens']['p95']:.0f}), completion mean "
                  f"{t['completion_tokens']['mean']:.0f} (p95 {t['completion_tokens']['p95']:.0f})")
    console.print(f"[bold]Model[/] {m['name']} ({m['params_b']:g}B, {m['dtype']}, KV {m['kv_dtype']}): weights "
                  f"{s['weights_gib']:.1f} GiB + KV {s['kv_bytes_per_token'] / 1024:.0f} KiB/token x "
                  f"{s['context_tokens']} tokens x {s['concurrency']} sequences = {s['kv_gib']:.1f} GiB")
    console.print(f"[bold]Replica[/] {hw['gpus_per_replica']} x {hw['gpu']} ({s['available_gib']:.0f} GiB usable), "
                  f"{hw['replicas']} replica(s) at <= {s['utilisation_target']:.0%} busy in the peak minute; "
                  f"{hw['cloud']} {hw['instance']}, prices as of {hw['prices_as_of']}")
    label = "[green]measured[/]" if tp["source"] == "measured" else "[yellow]ESTIMATE (roofline)[/]"
    console.print(f"[bold]Throughput[/] {label}: {tp['requests_per_s']:.2f} requests/s, "
                  f"{tp['output_tokens_per_s']:,.0f} output tokens/s per replica")
    for line in tp["assumptions"]:
        console.print(f"  - {line}")
    table = Table(title="Cost of this traffic", title_justify="left")
    for column in ("option", "per 1k requests", "per 1M input", "per 1M output", "per month",
                   "break-even req/day (on-demand)", "(spot)"):
        table.add_column(column, justify="left" if column == "option" else "right")
    for o in est.options:
        table.add_row(_marked(o.name, o.verified), _usd(o.per_1k_requests), _usd(o.per_1m_input), _usd(o.per_1m_output),
                      _usd(o.per_month), _break_even(o, est.plan.on_demand, o.break_even_on_demand),
                      _break_even(o, est.plan.spot, o.break_even_spot),
                      style="bold" if o.kind == "self-hosted" else None)
    console.print(table)
    if data["unverified"]:
        console.print(f"[yellow]{UNVERIFIED} unverified[/]: no published page confirmed "
                      + "; ".join(data["unverified"]) + " (docs/cost.md, Sources).", highlight=False)
    if data["alternatives"]:
        console.print("Other GPUs that fit: " + "; ".join(
            f"{_marked(a['gpu'], a['verified'])} x {a['gpus_per_replica']} ({a['cloud']}) x {a['replicas']}: "
            f"{_usd(a['per_month_on_demand'])}/month" for a in data["alternatives"]))


def _volumes(est: Estimate) -> list[float]:
    """Requests/day from 1 % to 100 x today's traffic, widened to show every break-even point."""
    now = est.request.traffic.requests_per_day
    evens = [v for o in est.options for v in (o.break_even_on_demand, o.break_even_spot) if v]
    lo, hi = min([now / 100, *(v / 3 for v in evens)]), max([now * 100, *(v * 3 for v in evens)])
    steps = 120
    return [lo * (hi / lo) ** (i / steps) for i in range(steps + 1)]


def _plotted(options: list[Option]) -> list[Option]:
    apis = [o for o in options if o.kind == "api"]
    if len(apis) <= PLOTTED_APIS:
        return apis
    picks = sorted({round(i * (len(apis) - 1) / (PLOTTED_APIS - 1)) for i in range(PLOTTED_APIS)})
    return [apis[i] for i in picks]


def _curves(est: Estimate, volumes: list[float]) -> tuple[list[Series], list[Series], list[Mark]]:
    """(monthly cost, cost per 1k requests) against volume for each option plotted; break-even marks."""
    traffic, plan = est.request.traffic, est.plan
    at = [traffic.scaled(v) for v in volumes]
    monthly: list[Series] = []
    per_1k: list[Series] = []
    for setup in (plan.on_demand, plan.spot):
        if setup is not None:
            priced = [self_hosted_option(setup, t) for t in at]
            monthly.append((setup.label, volumes, [o.per_month for o in priced]))
            per_1k.append((setup.label, volumes, [o.per_1k_requests for o in priced]))
    marks: list[Mark] = []
    for option in _plotted(est.options):
        model = option.name
        priced = [api_option(model, t, plan.on_demand, plan.spot) for t in at]
        monthly.append((model, volumes, [o.per_month for o in priced]))
        per_1k.append((model, volumes, [o.per_1k_requests for o in priced]))
        if option.break_even_on_demand is not None:
            marks.append((f"vs {model}", option.break_even_on_demand))
    return monthly, per_1k, marks


def render_html(est: Estimate) -> str:
    data = as_json(est)
    volumes = _volumes(est)
    monthly, per_1k, marks = _curves(est, volumes)
    now = est.request.traffic.requests_per_day
    plots = [
        line_chart(monthly, "Monthly cost vs traffic", "requests/day", "USD per month", log_x=True, log_y=True,
                   marks=[("today", now)]),
        line_chart(per_1k, "Break-even: cost per 1k requests", "requests/day", "USD per 1k requests", log_x=True,
                   log_y=True, marks=marks),
    ]
    bench = est.request.bench
    if bench is not None:
        points = bench.points
        concurrency = [float(p.concurrency) for p in points]
        plots.append(scatter_chart(
            [("completed", concurrency, [p.requests_per_s for p in points])]
            + ([("goodput", concurrency, [p.goodput_per_s or 0.0 for p in points])] if bench.slo_ms else []),
            "Measured throughput (tokenway bench)", "concurrency", "requests/s", ymin=0.0))
    rows = "".join(
        f"<tr><td class=l>{escape(_marked(o.name, o.verified))}</td><td>{_usd(o.per_1k_requests)}</td>"
        f"<td>{_usd(o.per_1m_input)}</td><td>{_usd(o.per_1m_output)}</td><td>{_usd(o.per_month)}</td>"
        f"<td>{_break_even(o, est.plan.on_demand, o.break_even_on_demand)}</td>"
        f"<td>{_break_even(o, est.plan.spot, o.break_even_spot)}</td></tr>"
        for o in est.options
    )
    facts = "".join(
        f"<tr><th class=l>{escape(section)}</th><td class=l><code>{escape(_facts(values))}</code></td></tr>"
        for section, values in data.items() if isinstance(values, dict)
    )
    assumptions = "".join(f"<li>{escape(a)}</li>" for a in data["throughput"]["assumptions"])
    kind = "measured" if data["throughput"]["source"] == "measured" else "a roofline ESTIMATE"
    footnote = (f"<p>{UNVERIFIED} unverified: no published page confirmed {escape('; '.join(data['unverified']))}"
                " (docs/cost.md, Sources).</p>" if data["unverified"] else "")
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>tokenway cost</title><style>"
        "body{font-family:sans-serif;margin:24px;color:#222;max-width:1200px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td.l,th.l{text-align:left}"
        ".plots{display:flex;flex-wrap:wrap;gap:12px}</style></head><body>"
        f"<h1>tokenway cost</h1><p>{escape(data['traffic']['source'])}; prices as of "
        f"{escape(data['hardware']['prices_as_of'])}. Throughput is {kind}.</p>"
        "<table><tr><th class=l>option</th><th>per 1k requests</th><th>per 1M input</th><th>per 1M output</th>"
        f"<th>per month</th><th>break-even req/day (on-demand)</th><th>(spot)</th></tr>{rows}</table>{footnote}"
        f"<div class=plots>{''.join(plots)}</div><h2>Inputs and sizing</h2><table>{facts}</table>"
        f"<h2>Throughput assumptions</h2><ul>{assumptions}</ul></body></html>"
    )


def _facts(values: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.4g}" if math.isfinite(v) else str(v)
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {show(x)}" for k, x in v.items()) + "}"
        return str(v)

    return "; ".join(f"{k}: {show(v)}" for k, v in values.items() if k != "assumptions")
