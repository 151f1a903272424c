"""Inline-SVG line and scatter charts, so HTML reports need no plotting library and no CDN.

Used by ``tokenway bench``'s report and ``tokenway cost``'s. The axes always contain the data:
each axis runs from a round value at or below the smallest value to a round value at or above
the largest, so no line or marker is drawn outside the plot area.
"""

from __future__ import annotations

import math
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
W, H = 560, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 44
PLOT_W, PLOT_H = W - LEFT - RIGHT, H - TOP - BOTTOM
LEGEND_CHARS, LEGEND_CHAR_W = 40, 6.2  # a name shown whole up to 40 characters; ~6 px a character at 11 px

Series = tuple[str, list[float], list[float]]
# A vertical reference line: its label and x (a break-even point, a measured limit).
Mark = tuple[str, float]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values from a multiple of the step at or below ``lo`` to one at or above ``hi``."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, 10) for i in range(first, last + 1)]


def decade_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten from the one at or below ``lo`` to the one at or above ``hi`` (both > 0)."""
    first, last = math.floor(math.log10(lo) + 1e-9), math.ceil(math.log10(hi) - 1e-9)
    return [10.0**e for e in range(first, max(last, first + 1) + 1)]


def _label(v: float) -> str:
    """Short tick labels (10k, 2.5M), so that the last one fits beside the plot area."""
    for at_least, scale, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if abs(v) >= at_least:
            return f"{v / scale:g}{suffix}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:g}"


def downsample(xs: list[float], ys: list[float], limit: int = 300) -> tuple[list[float], list[float]]:
    if len(xs) <= limit:
        return xs, ys
    step = len(xs) / limit
    idx = sorted({int(i * step) for i in range(limit)} | {len(xs) - 1})
    return [xs[i] for i in idx], [ys[i] for i in idx]


def _points(xs: list[float], ys: list[float], log_x: bool, log_y: bool) -> list[tuple[float, float]]:
    """The drawable points: finite, and positive on a log axis."""
    return [
        (x, y)
        for x, y in zip(xs, ys, strict=False)
        if math.isfinite(x) and math.isfinite(y) and (x > 0 or not log_x) and (y > 0 or not log_y)
    ]


def line_chart(
    series: list[Series],
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    markers: bool = False,
    lines: bool = True,
    ymin: float | None = None,
    log_x: bool = False,
    log_y: bool = False,
    marks: list[Mark] | None = None,
) -> str:
    """An SVG chart of the given (name, xs, ys) series: lines, markers or both.

    ``ymin`` lowers the y axis to at least that value (0 for rates and counts); ``log_x`` and ``log_y``
    draw that axis on a log scale, with a tick per power of ten; ``marks`` are labelled vertical lines,
    and the x axis covers them too."""
    marks = [(name, x) for name, x in marks or [] if math.isfinite(x) and (x > 0 or not log_x)]
    pts = [p for _, xs, ys in series for p in _points(xs, ys, log_x, log_y)]
    if not pts:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="60"><text x="10" y="30">'
            f"{escape(title)}: no data</text></svg>"
        )
    all_x = [p[0] for p in pts] + [x for _, x in marks]
    lo_y, hi_y = min(p[1] for p in pts), max(p[1] for p in pts)
    xt = decade_ticks(min(all_x), max(all_x)) if log_x else nice_ticks(min(all_x), max(all_x))
    if log_y:
        yt = decade_ticks(lo_y, hi_y)
    else:
        yt = nice_ticks(lo_y if ymin is None else min(ymin, lo_y), hi_y)
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]
    scale_x = math.log10 if log_x else float
    scale_y = math.log10 if log_y else float

    def sx(x: float) -> float:
        return LEFT + (scale_x(x) - scale_x(x0)) / ((scale_x(x1) - scale_x(x0)) or 1) * PLOT_W

    def sy(y: float) -> float:
        return TOP + PLOT_H - (scale_y(y) - scale_y(y0)) / ((scale_y(y1) - scale_y(y0)) or 1) * PLOT_H

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        f'font-family="sans-serif" font-size="11">',
        f'<text x="{W / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    for t in xt:
        out.append(
            f'<line x1="{sx(t):.1f}" y1="{TOP}" x2="{sx(t):.1f}" y2="{TOP + PLOT_H}" stroke="#eee"/>'
            f'<text x="{sx(t):.1f}" y="{TOP + PLOT_H + 14}" text-anchor="middle">{_label(t)}</text>'
        )
    for t in yt:
        out.append(
            f'<line x1="{LEFT}" y1="{sy(t):.1f}" x2="{LEFT + PLOT_W}" y2="{sy(t):.1f}" stroke="#eee"/>'
            f'<text x="{LEFT - 4}" y="{sy(t) + 4:.1f}" text-anchor="end">{_label(t)}</text>'
        )
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}" fill="none" stroke="#999"/>')
    out.append(f'<text x="{LEFT + PLOT_W / 2}" y="{H - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(
        f'<text x="14" y="{TOP + PLOT_H / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {TOP + PLOT_H / 2})">{escape(ylabel)}</text>'
    )
    for i, (name, x) in enumerate(marks):
        label_y = TOP + PLOT_H - 4 - 12 * (i % 4)  # staggered: marks close together keep readable labels
        out.append(
            f'<line class="mark" x1="{sx(x):.1f}" y1="{TOP}" x2="{sx(x):.1f}" y2="{TOP + PLOT_H}" stroke="#555" '
            f'stroke-dasharray="4 3"/><text x="{sx(x) + 3:.1f}" y="{label_y}" fill="#555">{escape(name[:30])}</text>'
        )
    for i, (_, xs, ys) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        drawn = _points(*downsample(xs, ys), log_x, log_y)
        if lines:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in drawn)
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{path}"/>')
        if markers or not lines:
            out.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>' for x, y in drawn)
    out.extend(_legend([name for name, _, _ in series]))
    out.append("</svg>")
    return "".join(out)


def _legend(names: list[str]) -> list[str]:
    """The series' names in the plot's top-right corner, on a box that keeps them readable over the data."""
    names = [name[:LEGEND_CHARS] for name in names]
    width = 20 + LEGEND_CHAR_W * max(len(name) for name in names)
    left = LEFT + PLOT_W - width - 4
    out = [f'<rect class="legend" x="{left:.1f}" y="{TOP + 3}" width="{width:.1f}" height="{14 * len(names) + 4}" '
           f'fill="#fff" fill-opacity="0.85" stroke="#ccc"/>']
    for i, name in enumerate(names):
        ly = TOP + 12 + 14 * i
        out.append(f'<rect x="{left + 4:.1f}" y="{ly - 4}" width="10" height="3" fill="{PALETTE[i % len(PALETTE)]}"/>'
                   f'<text x="{left + 18:.1f}" y="{ly}">{escape(name)}</text>')
    return out


def scatter_chart(
    series: list[Series],
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    ymin: float | None = None,
    log_x: bool = False,
    log_y: bool = False,
    marks: list[Mark] | None = None,
) -> str:
    """Markers only, no lines between them."""
    return line_chart(series, title, xlabel, ylabel, lines=False, ymin=ymin, log_x=log_x, log_y=log_y, marks=marks)
