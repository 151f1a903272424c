"""`tokenway bench`: argument parsing and orchestration of runs, sweeps and outputs."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson

from tokenway.bench import compare as compare_mod
from tokenway.bench.audit import DEFAULT_TARGETS
from tokenway.bench.client import Endpoint
from tokenway.bench.loadgen import LoadShape, RunResult, run
from tokenway.bench.metrics import SLO
from tokenway.bench.parallel import run_in_processes
from tokenway.bench.progress import Progress
from tokenway.bench.report import (
    document,
    print_definitions,
    print_run,
    print_sweep,
    run_document,
    write_csv,
    write_json,
)
from tokenway.bench.report_html import write_html
from tokenway.bench.workload import LengthDist, Workload, load_sharegpt, synthetic


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"TOKENWAY_BENCH_{name}", default)


def _numbers(spec: str | None) -> list[float]:
    if not spec:
        return []
    return [math.inf if p.strip() == "inf" else float(p) for p in spec.split(",") if p.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tokenway bench",
        description="Load-test an OpenAI-compatible endpoint with vLLM-compatible metric definitions and a "
        "validity audit. Subcommand: `tokenway bench compare A.json B.json`.",
    )
    t = p.add_argument_group("target")
    t.add_argument(
        "--base-url",
        default=_env("BASE_URL", "http://127.0.0.1:8000/v1"),
        help="OpenAI-compatible base URL ending in /v1 (env TOKENWAY_BENCH_BASE_URL)",
    )
    t.add_argument("--model", default=_env("MODEL"), help="model name to request (env TOKENWAY_BENCH_MODEL)")
    t.add_argument("--api", choices=("chat", "completions"), default="chat")
    t.add_argument(
        "--api-key",
        default=_env("API_KEY", os.environ.get("OPENAI_API_KEY")),
        help="bearer key (env TOKENWAY_BENCH_API_KEY or OPENAI_API_KEY)",
    )
    t.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'", help="extra header")
    t.add_argument("--extra-body", default=None, help="JSON object merged into every request body")
    t.add_argument("--ignore-eos", action="store_true", help="send ignore_eos=true (vLLM/SGLang)")
    t.add_argument("--min-tokens", action="store_true", help="send min_tokens=max_tokens (vLLM)")
    t.add_argument(
        "--continuous-usage",
        action="store_true",
        help="ask for usage on every chunk (vLLM continuous_usage_stats): exact per-event token counts",
    )
    t.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, seconds")
    load = p.add_argument_group("load shape")
    load.add_argument(
        "--concurrency",
        "-c",
        default=None,
        help="closed loop: N users sending back to back; a list (1,8,32) runs each",
    )
    load.add_argument("--rate", "-r", default=None, help="open loop: requests/s (or inf); a list runs each")
    load.add_argument("--arrival", choices=("poisson", "gamma", "constant"), default="poisson")
    load.add_argument(
        "--burstiness",
        type=float,
        default=1.0,
        help="gamma shape: <1 burstier than Poisson, >1 more regular (implies --arrival gamma)",
    )
    load.add_argument("--max-concurrency", type=int, default=None, help="cap on in-flight requests (open loop)")
    load.add_argument("--ramp-up", type=float, default=0.0, help="seconds to ramp users/rate up linearly")
    load.add_argument("--num-requests", "-n", type=int, default=None, help="measured requests per run")
    load.add_argument("--duration", "-d", type=float, default=None, help="seconds per run")
    load.add_argument("--warmup-requests", type=int, default=0, help="requests sent first and excluded")
    load.add_argument("--warmup-seconds", type=float, default=0.0, help="seconds at the start excluded")
    load.add_argument(
        "--sweep",
        type=int,
        default=None,
        metavar="N",
        help="1 user, then saturation (--sweep-max-concurrency), then N Poisson rates in between",
    )
    load.add_argument("--sweep-max-concurrency", type=int, default=256)
    load.add_argument("--seed", type=int, default=0)
    load.add_argument(
        "--workers",
        type=int,
        default=1,
        help="client processes sharing the load (when the audit reports event-loop lag)",
    )
    w = p.add_argument_group("workload")
    w.add_argument(
        "--dataset",
        choices=("synthetic", "sharegpt", "sample"),
        default="synthetic",
        help="sample = the small ShareGPT-format set shipped with tokenway",
    )
    w.add_argument("--dataset-path", default=None, help="ShareGPT JSON file for --dataset sharegpt")
    w.add_argument("--input-len", default="256", help="prompt tokens: MEAN[,STD[,MIN[,MAX]]]")
    w.add_argument(
        "--output-len",
        default=None,
        help="max_tokens: MEAN[,STD[,MIN[,MAX]]] (default 128; datasets use recorded lengths unless set)",
    )
    w.add_argument("--turns", type=int, default=1, help="synthetic multi-turn: turns per conversation")
    w.add_argument("--multi-turn", action="store_true", help="datasets: replay every turn of a conversation")
    w.add_argument("--prefix-groups", type=int, default=0, help="shared system-prefix groups (cache-aware routing)")
    w.add_argument("--prefix-len", type=int, default=512, help="tokens in each shared prefix")
    o = p.add_argument_group("output")
    o.add_argument("--goodput", nargs="*", default=[], metavar="SLO", help="e.g. ttft:500 tpot:50 e2el:5000 (ms)")
    o.add_argument(
        "--targets",
        default=None,
        help="override targets, e.g. ttft_p99_ms:500,tpot_p99_ms:50,output_tok_s:1000,concurrency:100",
    )
    o.add_argument("--out", default=None, help="directory for results.json, requests.csv and report.html")
    o.add_argument("--json", default=None, help="results JSON path")
    o.add_argument("--csv", default=None, help="per-request CSV path")
    o.add_argument("--html", default=None, help="HTML report path")
    o.add_argument("--detailed", action="store_true", help="store every token's arrival time in the JSON")
    o.add_argument("--progress", choices=("auto", "rich", "tqdm", "plain", "off"), default="auto")
    o.add_argument("--fail-on-warn", action="store_true", help="exit 3 when any run's audit says WARN")
    o.add_argument("--no-uvloop", action="store_true", help="use asyncio's default loop even if uvloop is installed")
    return p


def build_workload(args: argparse.Namespace) -> Workload:
    """The workload the parsed arguments describe (also rebuilt inside worker processes)."""
    out_len = LengthDist.parse(args.output_len or "128")
    if args.dataset == "synthetic":
        return synthetic(
            LengthDist.parse(args.input_len),
            out_len,
            seed=args.seed,
            turns=args.turns,
            prefix_groups=args.prefix_groups,
            prefix_len=args.prefix_len,
        )
    if args.dataset == "sharegpt" and not args.dataset_path:
        raise ValueError("--dataset sharegpt needs --dataset-path FILE (or use --dataset sample)")
    # Datasets ask for the recorded reply length unless --output-len fixes it.
    fixed = out_len.mean if args.output_len else None
    path = args.dataset_path if args.dataset == "sharegpt" else None
    workload, _ = load_sharegpt(path, seed=args.seed, multi_turn=args.multi_turn, fixed_output=fixed)
    return workload


def _endpoint(args: argparse.Namespace) -> Endpoint:
    if not args.model:
        raise ValueError("--model is required (the model name the endpoint serves; env TOKENWAY_BENCH_MODEL)")
    headers = []
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep:
            raise ValueError(f"--header {h!r}: expected 'NAME: VALUE'")
        headers.append((name.strip(), value.strip()))
    extra = orjson.loads(args.extra_body) if args.extra_body else {}
    if not isinstance(extra, dict):
        raise ValueError("--extra-body must be a JSON object")
    return Endpoint(
        args.base_url,
        args.model,
        args.api,
        args.api_key,
        tuple(headers),
        args.ignore_eos,
        args.min_tokens,
        args.continuous_usage,
        tuple(extra.items()),
        args.timeout,
    )


def _targets(spec: str | None) -> dict[str, float]:
    targets = dict(DEFAULT_TARGETS)
    for part in (spec or "").split(","):
        if part.strip():
            name, _, value = part.partition(":")
            if name.strip() not in DEFAULT_TARGETS:
                raise ValueError(f"--targets {name!r}: known targets are {', '.join(DEFAULT_TARGETS)}")
            targets[name.strip()] = float(value)
    return targets


def _base_shape(args: argparse.Namespace) -> dict[str, Any]:
    if args.num_requests is None and args.duration is None:
        args.num_requests = 100
    arrival = "gamma" if args.burstiness != 1.0 and args.arrival == "poisson" else args.arrival
    return {
        "arrival": arrival,
        "burstiness": args.burstiness,
        "max_concurrency": args.max_concurrency,
        "ramp_up_s": args.ramp_up,
        "num_requests": args.num_requests,
        "duration_s": args.duration,
        "warmup_requests": args.warmup_requests,
        "warmup_s": args.warmup_seconds,
        "seed": args.seed,
    }


async def _one(ep: Endpoint, workload: Workload, shape: LoadShape, args: argparse.Namespace) -> RunResult:
    if args.workers > 1:
        if args.progress != "off":
            print(f"{shape.label}: running on {args.workers} client processes...", file=sys.stderr)
        return await asyncio.to_thread(run_in_processes, ep, args, shape, args.workers)
    bar = Progress(shape.label, shape.num_requests, kind=args.progress) if args.progress != "off" else None
    try:
        return await run(ep, workload, shape, bar.update if bar else None)
    finally:
        if bar:
            bar.close()


async def _execute(
    args: argparse.Namespace, ep: Endpoint, workload: Workload, emit: Callable[[RunResult], dict[str, Any]]
) -> list[dict[str, Any]]:
    base = _base_shape(args)
    runs: list[dict[str, Any]] = []
    if args.sweep is not None:
        if args.rate or args.concurrency:
            raise ValueError("--sweep chooses its own load points: drop --rate/--concurrency")
        # GuideLLM-style sweep: find the single-user and saturated request rates, then probe between.
        low = emit(await _one(ep, workload, LoadShape(concurrency=1, **base), args))
        high = emit(await _one(ep, workload, LoadShape(concurrency=args.sweep_max_concurrency, **base), args))
        runs += [low, high]
        r_lo, r_hi = low["summary"]["request_throughput"], high["summary"]["request_throughput"]
        n = max(0, args.sweep)
        for i in range(1, n + 1):
            rate = r_lo + (r_hi - r_lo) * i / (n + 1)
            if rate > 0:
                runs.append(emit(await _one(ep, workload, LoadShape(rate=rate, **base), args)))
        return runs
    rates, concs = _numbers(args.rate), _numbers(args.concurrency)
    if rates and concs:
        raise ValueError("give --rate or --concurrency, not both (use --max-concurrency to cap an open-loop run)")
    shapes = (
        [LoadShape(rate=r, **base) for r in rates]
        if rates
        else [LoadShape(concurrency=int(c), **base) for c in concs or [1]]
    )
    for shape in shapes:
        runs.append(emit(await _one(ep, workload, shape, args)))
    return runs


def _runner(no_uvloop: bool) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    factory = None
    if not no_uvloop:
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            factory = None

    def go(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)

    return go


def run_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        ep, workload = _endpoint(args), build_workload(args)
        slo = SLO.parse(args.goodput)
        targets = _targets(args.targets)
    except (ValueError, OSError) as exc:
        print(f"tokenway bench: {exc}", file=sys.stderr)
        return 2

    def emit(result: RunResult) -> dict[str, Any]:
        doc = run_document(result, slo, targets, detailed=args.detailed)
        print_run(doc, f"{ep.url} model={ep.model}", sys.stdout)
        return doc

    try:
        runs = _runner(args.no_uvloop)(_execute(args, ep, workload, emit))
    except ValueError as exc:
        print(f"tokenway bench: {exc}", file=sys.stderr)
        return 2
    if len(runs) > 1:
        print_sweep(runs, sys.stdout)
    print_definitions(sys.stdout)
    # Header values often carry credentials: keep only their names in the results file.
    config = {k: v for k, v in vars(args).items() if k != "api_key"} | {"url": ep.url}
    config["header"] = [h.partition(":")[0].strip() for h in args.header]
    doc = document(runs, config)
    out = Path(args.out) if args.out else None
    paths = {
        "json": args.json or (out and out / "results.json"),
        "csv": args.csv or (out and out / "requests.csv"),
        "html": args.html or (out and out / "report.html"),
    }
    writers = {"json": write_json, "csv": write_csv, "html": write_html}
    for kind, path in paths.items():
        if path:
            writers[kind](doc, Path(path))
            print(f"wrote {path}")
    if args.fail_on_warn and any(r["audit"]["verdict"] != "PASS" for r in runs):
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    """`tokenway bench ARGS...` (argv excludes "bench"); `compare A B` compares two results files."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compare":
        return compare_mod.main(argv[1:])
    return run_main(argv)
