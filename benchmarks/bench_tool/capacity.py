"""How much load can the `tokenway bench` client itself offer on this box?

    python benchmarks/bench_tool/capacity.py [--seconds 5] [--out benchmarks/bench_tool/results]

1. Requests/s: closed loop at several concurrencies against the fixed-reply nginx upstream from
   ../shared/bench (the fastest possible "model"; needs Debian's nginx), 1 and 2 client processes.
2. Concurrent streams: closed loop against the scripted upstream of the tests (first token after
   50 ms, then a token every 20 ms, 64 tokens), 1 and 2 client processes.

Prints one line per point (stderr; the full summaries go to OUT/console.txt) with the audit's
event-loop lag and coalescing share, which say when the client, not the server, became the
limit. Run from the repository root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench_fakes import Script, serve  # noqa: E402
from tokenway.bench.cli import main as bench  # noqa: E402

NGINX_CONF = ROOT.parent / "shared" / "bench" / "mock-upstream.nginx.conf"


def _line(path: Path, workers: int) -> str:
    run = json.loads(path.read_text())["runs"][0]
    s = run["summary"]
    checks = {c["name"]: c for c in run["audit"]["checks"]}
    lag = checks["event_loop_lag"]["value"]["p99_ms"]
    return (
        f"{s['label']:<18} workers={workers}  req/s={s['request_throughput']:8.1f}  "
        f"tok/s={s['output_throughput']:8.0f}  TTFT p50={s['ttft_ms']['p50']:7.2f}  "
        f"p99={s['ttft_ms']['p99']:7.2f}  TPOT mean={s['tpot_ms'].get('mean', float('nan')):6.2f}  "
        f"loop-lag p99={lag:7.2f} ms  zero-gap={checks['coalesced_chunks']['value']:.3f}  "
        f"errors={s['errors'] or 0}"
    )


def _point(tag: str, base: str, conc: int, workers: int, seconds: float, out: Path, extra: list[str]) -> None:
    path = out / f"{tag}-c{conc}-w{workers}.json"
    argv = [
        "--base-url",
        base,
        "--model",
        "mock",
        "-c",
        str(conc),
        "-d",
        str(seconds),
        "--workers",
        str(workers),
        "--progress",
        "off",
        "--json",
        str(path),
        *extra,
    ]
    with (out / "console.txt").open("a") as console, contextlib.redirect_stdout(console):
        bench(argv)
    print(_line(path, workers), file=sys.stderr)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--out", default=None, help="keep the results files here")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-capacity-"))
    out.mkdir(parents=True, exist_ok=True)
    nginx = shutil.which("nginx")
    if nginx and NGINX_CONF.exists():
        run_dir = Path(tempfile.mkdtemp(prefix="mockup-"))
        conf = NGINX_CONF.read_text().replace("/tmp/mockup/", f"{run_dir}/")
        (run_dir / "nginx.conf").write_text(conf)
        subprocess.run([nginx, "-c", str(run_dir / "nginx.conf"), "-p", f"{run_dir}/"], check=True)
        time.sleep(0.3)
        try:
            print("== fixed-reply upstream (nginx, 8-token SSE reply) ==", file=sys.stderr)
            for workers in (1, 2):
                for conc in (1, 16, 64, 256):
                    _point("fixed", "http://127.0.0.1:9101/sse/v1", conc, workers, args.seconds, out, [])
        finally:
            subprocess.run(["kill", (run_dir / "nginx.pid").read_text().strip()], check=False)
    else:
        print("nginx not found (apt-get install -y nginx): skipping the requests/s part", file=sys.stderr)
    print("== paced streams (first token 50 ms, then 20 ms/token, 64 tokens) ==", file=sys.stderr)
    with serve() as url:
        header = Script(ttft_ms=50, itl_ms=20).header()
        for conc, workers in ((100, 1), (100, 2), (200, 1), (200, 2)):
            _point(
                "paced",
                url,
                conc,
                workers,
                args.seconds,
                out,
                ["-H", header, "--output-len", "64", "--input-len", "32"],
            )
    print(f"results in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
