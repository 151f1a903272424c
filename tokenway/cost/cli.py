"""``tokenway cost``: what would this traffic cost self-hosted, and on each API? (docs/cost.md)"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from tokenway.cost import bench_file
from tokenway.cost.catalogue import CatalogueError, ModelSpec, check_dtype, load_gpus, load_models, pick
from tokenway.cost.estimate import Request, estimate
from tokenway.cost.pricing import chat_models
from tokenway.cost.report import as_json, print_table, render_html
from tokenway.cost.traffic import Tokens, Traffic, from_ledger, from_numbers

DEFAULT_MODEL = "Llama-3.1-8B"
CUSTOM_MODEL_FLAGS = ("params_b", "layers", "kv_heads", "head_dim", "context_length")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tokenway cost",
        description="Price traffic self-hosted (GPUs on-demand and spot) against every API model in the price "
                    "table, with the break-even volume. Traffic comes from the usage ledger, a bench file or flags.",
    )
    traffic = p.add_argument_group("traffic")
    traffic.add_argument("--from-ledger", action="store_true",
                         help="read the usage ledger the gateway writes (TOKENWAY_DATABASE_URL, else SQLite in "
                              "TOKENWAY_DATA_DIR, as `tokenway serve` uses)")
    traffic.add_argument("--days", type=float, default=7.0, help="ledger window (default %(default)s)")
    traffic.add_argument("--requests-per-day", type=float, help="volume (replaces the ledger's)")
    traffic.add_argument("--peak-factor", type=float, default=3.0,
                         help="busiest minute over the mean rate when the ledger does not say (default %(default)s)")
    traffic.add_argument("--prompt-tokens", type=float, help="mean prompt tokens (replaces the ledger's or bench's)")
    traffic.add_argument("--completion-tokens", type=float, help="mean completion tokens (likewise)")
    model = p.add_argument_group("model (a known name, or the five numbers for another)")
    model.add_argument("--model", help=f"(default {DEFAULT_MODEL})")
    model.add_argument("--params-b", type=float, help="parameters, billions")
    model.add_argument("--layers", type=int)
    model.add_argument("--kv-heads", type=int)
    model.add_argument("--head-dim", type=int)
    model.add_argument("--context-length", type=int, help="the model's longest context")
    model.add_argument("--dtype", help="weights: bf16, fp16, fp8, int8, int4, q8_0, q4_1 (default: the model's)")
    model.add_argument("--kv-dtype", default="fp16", help="KV cache (default %(default)s)")
    hw = p.add_argument_group("hardware and serving")
    hw.add_argument("--gpu", help="a GPU of the catalogue (default: the cheapest one that fits)")
    hw.add_argument("--cloud", help="price from this cloud (default: the GPU's cheapest)")
    hw.add_argument("--gpus", type=Path, metavar="FILE", help="your GPU catalogue YAML, over the shipped one")
    hw.add_argument("--bench", type=Path, metavar="FILE",
                    help="a `tokenway bench` results.json of one replica: measured throughput (with --gpu)")
    hw.add_argument("--concurrency", type=int, help="sequences in flight per replica (default: the bench's best, "
                                                     "else 32)")
    hw.add_argument("--context", type=int, help="tokens per sequence to hold KV cache for (default: p95 prompt + "
                                                "p95 completion)")
    hw.add_argument("--utilisation", type=float, default=0.7,
                    help="how busy the peak minute may keep a replica (default %(default)s)")
    out = p.add_argument_group("output")
    out.add_argument("--api", action="append", metavar="MODEL",
                     help="compare with this API model (repeat; default: every chat model in the price table)")
    out.add_argument("--json", action="store_true", help="print JSON instead of the table")
    out.add_argument("--html", type=Path, metavar="FILE", help="also write an HTML report with plots")
    return p


def _model(args: argparse.Namespace) -> tuple[str, ModelSpec]:
    given = {f: getattr(args, f) for f in CUSTOM_MODEL_FLAGS if getattr(args, f) is not None}
    if given:
        missing = [f"--{f.replace('_', '-')}" for f in CUSTOM_MODEL_FLAGS if f not in given]
        if missing:
            raise CatalogueError(f"A model given by numbers also needs {', '.join(missing)}.")
        return args.model or "custom", ModelSpec(**given, dtype=args.dtype or "bf16")
    known = load_models()
    name = pick("model", args.model or DEFAULT_MODEL, dict(known))
    return name, known[name]


async def _ledger_traffic(days: float) -> Traffic:
    from tokenway.access import open_database
    from tokenway.config import load_settings

    db = open_database(load_settings())
    await db.start()
    try:
        return await from_ledger(db, days, time.time())
    finally:
        await db.aclose()


def _tokens(given: float | None, measured: Tokens | None, flag: str) -> Tokens:
    """The flag's size when given, else what the ledger or bench measured."""
    if given is not None:
        if not given > 0:
            raise ValueError(f"{flag} must be above 0.")
        return Tokens.fixed(given)
    if measured is None:
        raise ValueError(f"No token sizes: pass {flag} (or --from-ledger, or a --bench file whose server sent usage).")
    return measured


def _traffic(args: argparse.Namespace, bench: bench_file.BenchResults | None) -> Traffic:
    """The ledger's traffic, or the volume given with the bench's token sizes; flags replace either's numbers."""
    if args.from_ledger:
        traffic = asyncio.run(_ledger_traffic(args.days))
        if args.requests_per_day is not None:
            traffic = traffic.scaled(args.requests_per_day)
        return replace(traffic, prompt=_tokens(args.prompt_tokens, traffic.prompt, "--prompt-tokens"),
                       completion=_tokens(args.completion_tokens, traffic.completion, "--completion-tokens"))
    if args.requests_per_day is None:
        raise ValueError("No traffic volume: pass --from-ledger or --requests-per-day.")
    measured_prompt = Tokens.of(bench.prompt_tokens) if bench and bench.prompt_tokens else None
    measured_completion = Tokens.of(bench.completion_tokens) if bench and bench.completion_tokens else None
    return from_numbers(
        args.requests_per_day, args.peak_factor,
        _tokens(args.prompt_tokens, measured_prompt, "--prompt-tokens"),
        _tokens(args.completion_tokens, measured_completion, "--completion-tokens"),
        f"token sizes from {bench.path}" if bench is not None else "token sizes given",
    )


def _request(args: argparse.Namespace) -> Request:
    if not 0 < args.utilisation <= 1:
        raise ValueError("--utilisation is a share of a replica's capacity: above 0, at most 1.")
    for flag in ("concurrency", "context"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be at least 1.")
    name, model = _model(args)
    bench = bench_file.load(args.bench) if args.bench is not None else None
    known_apis = chat_models()
    apis = [pick("API model", m, dict.fromkeys(known_apis)) for m in args.api] if args.api else known_apis
    return Request(
        traffic=_traffic(args, bench), model_name=name, model=model,
        dtype=check_dtype("--dtype", args.dtype or model.dtype), kv_dtype=check_dtype("--kv-dtype", args.kv_dtype),
        catalogue=load_gpus(args.gpus), gpu=args.gpu, cloud=args.cloud, concurrency=args.concurrency,
        context=args.context, utilisation=args.utilisation, bench=bench, apis=apis,
    )


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        result = estimate(_request(args))
    # Every bad input (unknown names, files of the wrong shape, numbers out of range) is one of these.
    except (CatalogueError, ValueError) as exc:
        print(f"tokenway cost: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(as_json(result), indent=2))
    else:
        try:
            print_table(result)
        except ModuleNotFoundError as exc:  # rich comes with the bench extra
            print(f"tokenway cost: the table needs {exc.name}: pip install 'tokenway[bench]', or pass --json",
                  file=sys.stderr)
            return 2
    if args.html is not None:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(render_html(result), encoding="utf-8")
        print(f"wrote {args.html}", file=sys.stderr)
    return 0
