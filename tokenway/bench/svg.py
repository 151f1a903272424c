"""A tiny inline-SVG line chart, so the HTML report needs no plotting library and no CDN."""

from __future__ import annotations

import math
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
W, H = 560, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 44

Series = tuple[str, list[float], list[float]]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _label(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:g}"


def downsample(xs: list[float], ys: list[float], limit: int = 300) -> tuple[list[float], list[float]]:
    if len(xs) <= limit:
        return xs, ys
    step = len(xs) / limit
    idx = sorted({int(i * step) for i in range(limit)} | {len(xs) - 1})
    return [xs[i] for i in idx], [ys[i] for i in idx]


def line_chart(
    series: list[Series],
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    markers: bool = False,
    ymin: float | None = None,
) -> str:
    """An SVG line chart of the given (name, xs, ys) series."""
    pts = [
        (x, y) for _, xs, ys in series for x, y in zip(xs, ys, strict=False) if math.isfinite(x) and math.isfinite(y)
    ]
    if not pts:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="60"><text x="10" y="30">'
            f"{escape(title)}: no data</text></svg>"
        )
    xt = nice_ticks(min(p[0] for p in pts), max(p[0] for p in pts))
    lo_y = min(p[1] for p in pts) if ymin is None else ymin
    yt = nice_ticks(lo_y, max(p[1] for p in pts))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / ((x1 - x0) or 1) * pw

    def sy(y: float) -> float:
        return TOP + ph - (y - y0) / ((y1 - y0) or 1) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        f'font-family="sans-serif" font-size="11">',
        f'<text x="{W / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    for t in xt:
        out.append(
            f'<line x1="{sx(t):.1f}" y1="{TOP}" x2="{sx(t):.1f}" y2="{TOP + ph}" stroke="#eee"/>'
            f'<text x="{sx(t):.1f}" y="{TOP + ph + 14}" text-anchor="middle">{_label(t)}</text>'
        )
    for t in yt:
        out.append(
            f'<line x1="{LEFT}" y1="{sy(t):.1f}" x2="{LEFT + pw}" y2="{sy(t):.1f}" stroke="#eee"/>'
            f'<text x="{LEFT - 4}" y="{sy(t) + 4:.1f}" text-anchor="end">{_label(t)}</text>'
        )
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    out.append(f'<text x="{LEFT + pw / 2}" y="{H - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(
        f'<text x="14" y="{TOP + ph / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {TOP + ph / 2})">{escape(ylabel)}</text>'
    )
    for i, (name, xs, ys) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        dx, dy = downsample(xs, ys)
        path = " ".join(
            f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(dx, dy, strict=False) if math.isfinite(x) and math.isfinite(y)
        )
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{path}"/>')
        if markers:
            out.extend(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>'
                for x, y in zip(dx, dy, strict=False)
                if math.isfinite(x) and math.isfinite(y)
            )
        ly = TOP + 12 + 14 * i
        out.append(
            f'<rect x="{LEFT + pw - 150}" y="{ly - 8}" width="10" height="3" fill="{color}"/>'
            f'<text x="{LEFT + pw - 136}" y="{ly - 4}">{escape(name[:26])}</text>'
        )
    out.append("</svg>")
    return "".join(out)
