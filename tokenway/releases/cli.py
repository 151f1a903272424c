"""``tokenway releases``: each released model's versions and its shadow side by side, from
``GET /admin/releases`` on a running gateway (the master key: ``--api-key`` / ``TOKENWAY_API_KEY``).

One row per version (its weight and share, then what its traffic did) and one per shadow copy of a
version's traffic, so a candidate's latency, errors, tokens and cost read against the primary's.
With ``--workers N`` the numbers are those of the worker that answered.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import orjson

from tokenway.jobs.cli import CommandError, _Client, _table

COLUMNS = ["model", "version", "role", "serves", "share", "requests", "errors", "p50 ms", "p95 ms", "p99 ms",
           "prompt tok", "output tok/req", "cost $"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tokenway releases",
                                     description="Compare release versions and shadows on a running gateway.")
    parser.add_argument("--base-url", default=os.environ.get("TOKENWAY_BASE_URL", "http://127.0.0.1:8000"),
                        help="the gateway (env TOKENWAY_BASE_URL; default %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("TOKENWAY_API_KEY"),
                        help="the master key (env TOKENWAY_API_KEY)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        with _Client(args.base_url, args.api_key) as client:
            view = client.call("GET", "/admin/releases")
    except CommandError as exc:
        print(f"tokenway releases: {exc}", file=sys.stderr)
        return exc.code
    if args.json:
        print(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode())
        return 0
    if not view["models"]:
        print("No model has a release block in this gateway's config (docs/releases.md).")
        return 0
    _table(COLUMNS, rows(view))
    return 0


def rows(view: dict[str, Any]) -> list[list[Any]]:
    """The table's rows: each version, then the shadow copies of each version's traffic."""
    out: list[list[Any]] = []
    for name, release in view["models"].items():
        for version in release["versions"]:
            out.append([name, version["version"], "primary", version["model"], f"{version['share']:.1%}",
                        *_measured(version)])
        shadow = release["shadow"]
        if shadow is not None:
            for version, side in shadow["by_version"].items():
                out.append([name, version, f"shadow ({shadow['percent']:g}%)", side["model"], "-", *_measured(side)])
            if shadow["skipped"]:
                out.append([name, "-", "shadow skipped", shadow["model"], "-", shadow["skipped"], *["-"] * 7])
    return out


def _measured(side: dict[str, Any]) -> list[Any]:
    if "requests" not in side:  # configured, no traffic yet
        return [0, *["-"] * 7]
    latency = side["latency_ms"]
    return [side["requests"], side["errors"], latency["p50"], latency["p95"], latency["p99"], side["prompt_tokens"],
            side["output_tokens_avg"], f"{side['cost_usd']:.6f}"]
