"""The shared SVG charts: every plotted coordinate lies inside the plot area, in the bench report too."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from tokenway.bench.loadgen import LoadShape, RunResult
from tokenway.bench.records import RequestRecord
from tokenway.bench.report import document, run_document
from tokenway.bench.report_html import render
from tokenway.plots import LEFT, PLOT_H, PLOT_W, TOP, decade_ticks, line_chart, nice_ticks, scatter_chart

SVG = "{http://www.w3.org/2000/svg}"


def _plotted(svg: ET.Element) -> list[tuple[float, float]]:
    """Every data coordinate of one chart: polyline vertices, markers, reference lines."""
    points = []
    for line in svg.iter(f"{SVG}polyline"):
        points += [tuple(map(float, p.split(","))) for p in line.get("points", "").split()]
    points += [(float(c.get("cx", "nan")), float(c.get("cy", "nan"))) for c in svg.iter(f"{SVG}circle")]
    for mark in svg.iter(f"{SVG}line"):
        if mark.get("class") == "mark":
            points += [(float(mark.get("x1", "nan")), float(mark.get("y1", "nan"))),
                       (float(mark.get("x2", "nan")), float(mark.get("y2", "nan")))]
    return points  # type: ignore[return-value]


def _assert_inside(svg_text: str) -> int:
    """How many coordinates were checked; fails on the first one outside the plot area."""
    svg = ET.fromstring(svg_text)
    points = _plotted(svg)
    for x, y in points:
        assert LEFT - 0.05 <= x <= LEFT + PLOT_W + 0.05, (x, svg_text[:200])
        assert TOP - 0.05 <= y <= TOP + PLOT_H + 0.05, (y, svg_text[:200])
    return len(points)


@pytest.mark.parametrize(("lo", "hi"), [(0, 7.3), (0, 1), (3.2, 3.2), (-4.1, 97.5), (0.013, 0.0179), (12, 1e6 + 1)])
def test_ticks_reach_past_both_ends_of_the_data(lo: float, hi: float) -> None:
    ticks = nice_ticks(lo, hi)
    assert ticks[0] <= lo and ticks[-1] >= hi and len(ticks) <= 12
    assert decade_ticks(0.5, 1234.0) == [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0]


def _record(i: int, itl_s: float, tokens: int) -> RequestRecord:
    start = i * 0.05
    times = [start + 0.0137 * (i + 1) + k * itl_s for k in range(tokens)]
    return RequestRecord(
        i, i, 0, tokens, start, times[-1], status=200, ttft=times[0] - start, e2el=times[-1] - start,
        token_times=times, event_tokens=[1] * tokens, output_tokens=tokens, client_tokens=tokens,
        server_tokens=tokens, input_tokens=17,
    )


def _run(concurrency: int, itl_s: float) -> dict[str, object]:
    records = [_record(i, itl_s * (1 + i % 7), 9 + i % 5) for i in range(40)]
    result = RunResult(LoadShape(concurrency=concurrency, num_requests=40), records, 0.0, 0.0,
                       max(r.end for r in records))
    return run_document(result, None, {}, detailed=False)


def test_every_bench_report_plot_stays_inside_its_axes() -> None:
    # TTFTs of 13.7 ms to 548 ms, ITLs of 3.1 to 21.7 ms, throughputs of odd sizes: maxima that
    # lie above the last tick of a range that only counted up to the maximum (the old axes).
    doc = document([_run(1, 0.0031), _run(4, 0.0019), _run(16, 0.0043)], {"url": "http://x", "model": "m"})
    html = render(doc)
    charts = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert len(charts) == 4 + 3 * 5  # the sweep's four, and five per run
    assert sum(_assert_inside(chart) for chart in charts) > 1000


def test_log_axes_markers_and_marks_stay_inside() -> None:
    xs = [37.0, 410.0, 9_999.0, 123_456.0]
    chart = line_chart([("self-hosted", xs, [5.0, 3.1, 0.77, 0.0113]), ("api", xs, [1.9] * 4)], "cost", "req/day",
                       "$", log_x=True, log_y=True, markers=True, marks=[("break-even", 2_718.0)])
    assert _assert_inside(chart) == 4 * 2 * 2 + 2
    assert _assert_inside(scatter_chart([("p", [0.3, 7.7], [11.0, -2.5])], "s", "x", "y")) == 2
    assert "no data" in line_chart([("empty", [], [])], "t", "x", "y")
