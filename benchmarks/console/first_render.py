"""How long the console takes to show data: navigation start to the overview's numbers on screen.

The login page (one small script, no data) opened first in each context is the floor this box and
browser set, for a same-run comparison. Starts a gateway (a scripted fake model, a master key) on this
box, logs in once in headless Chromium, then opens ``/ui/`` ``--runs`` times, each in a fresh browser context (no HTTP cache: a first visit) and
again in the same context (a return visit). Measured in the page: ``domcontentloaded``, and the moment
the overview's first snapshot is painted (the "Spend today" figure filled in), which includes the
``/admin/overview`` round trip (shown apart). Prints a markdown table for RESULTS.md.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/console/first_render.py --runs 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import BrowserContext, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.console_support import MASTER, console_config
from tests.fakes import FakeUpstream
from tests.servers import running_app

# Runs before the page's own scripts: notes when the overview first shows a spend figure.
WATCH = """
new MutationObserver((_, observer) => {
  const spend = document.getElementById("stat-spend");
  if (spend && spend.textContent.startsWith("$")) {
    window.__painted = performance.now();
    observer.disconnect();
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def visit(context: BrowserContext, base: str) -> tuple[float, float, float]:
    page = context.new_page()
    page.goto(base + "/ui/")
    page.wait_for_function("window.__painted !== undefined")
    loaded = page.evaluate("performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd")
    painted = page.evaluate("window.__painted")
    snapshot = page.evaluate(
        "performance.getEntriesByType('resource').find((e) => e.name.endsWith('/admin/overview')).duration")
    page.close()
    return loaded, painted, snapshot


def login_page(context: BrowserContext, base: str) -> float:
    """The floor on this box: the login page (one small script, no data), in the same browser."""
    page = context.new_page()
    page.goto(base + "/ui/login")
    loaded = float(page.evaluate("performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"))
    page.close()
    return loaded


def log_in(context: BrowserContext, base: str) -> None:
    context.add_init_script(WATCH)
    answer = context.request.post(base + "/ui/session", data={"key": MASTER})
    assert answer.ok, answer.text()


def summary(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"| {name} | {statistics.median(values):.0f} | {p95:.0f} | {max(values):.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    upstream = FakeUpstream().start()
    first: list[tuple[float, float, float]] = []
    again: list[tuple[float, float, float]] = []
    floor: list[float] = []
    with running_app(console_config(upstream), master_key=MASTER, data_dir=Path(tempfile.mkdtemp())) as (base, _), \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True)
        for run in range(args.runs):
            context = browser.new_context(bypass_csp=True)  # lets the measuring script poll; the page is as shipped
            floor.append(login_page(context, base))
            log_in(context, base)
            first.append(visit(context, base))
            again.append(visit(context, base))
            context.close()
            print(f"\r{run + 1}/{args.runs} visits", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        browser.close()
    upstream.stop()
    print("| ms from navigation start | median | p95 | max |\n|---|---:|---:|---:|")
    print(summary("login page (the floor): DOMContentLoaded", floor))
    for name, visits in (("first visit", first), ("return visit", again)):
        print(summary(f"{name}: DOMContentLoaded", [v[0] for v in visits]))
        print(summary(f"{name}: overview data painted", [v[1] for v in visits]))
        print(summary(f"{name}: of which the /admin/overview call", [v[2] for v in visits]))


if __name__ == "__main__":
    main()
