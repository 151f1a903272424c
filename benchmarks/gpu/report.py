"""Print the phases of one benchmark run side by side, with each one's share of raw generate_batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

PHASES = ("raw.json", "engine.json", "gateway.json")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    results = [json.loads((out / name).read_text()) for name in PHASES if (out / name).is_file()]
    if not results:
        raise SystemExit(f"no phase results in {out}")
    raw = next((r for r in results if r["phase"].startswith("raw")), None)
    header = ("phase", "ok", "out tok", "wall s", "tok/s", "vs raw", "TTFT p50", "p99")
    print("{:<24} {:>9} {:>8} {:>8} {:>8} {:>7} {:>9} {:>7}".format(*header))
    for r in results:
        share = f"{r['output_tok_s'] / raw['output_tok_s']:.1%}" if raw else "-"
        p50 = f"{r['ttft_p50_s']:.2f}s" if r["ttft_p50_s"] is not None else "-"
        p99 = f"{r['ttft_p99_s']:.2f}s" if r["ttft_p99_s"] is not None else "-"
        print(
            f"{r['phase']:<24} {r['ok']:>4}/{r['requests']:<4} {r['completion_tokens']:>8} "
            f"{r['wall_s']:>8.1f} {r['output_tok_s']:>8.1f} {share:>7} {p50:>9} {p99:>7}"
        )
    if raw and raw["notes"].get("output_tok_s_over_that_span"):
        print(
            f"raw over its own first-request-to-last-token span (no manager start/stop): "
            f"{raw['notes']['output_tok_s_over_that_span']} tok/s"
        )


if __name__ == "__main__":
    main()
