"""``tokenway``: serve, check-config, bench. Every ``serve`` flag is also a ``TOKENWAY_*`` env var."""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tokenway.config import ConfigError, Settings, load_config
from tokenway.usage import cli as access_commands


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        from tokenway.bench.cli import main as bench_main

        sys.exit(bench_main(argv[1:]))
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        sys.exit(serve(args))
    if args.command == "check-config":
        sys.exit(check_config(args.file))
    if args.command in ("keys", "usage"):
        sys.exit(access_commands.run(args))
    parser.print_help()
    sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenway", description="An OpenAI-compatible LLM gateway.")
    commands = parser.add_subparsers(dest="command")
    defaults = Settings()
    serve = commands.add_parser("serve", help="run the gateway (flags default to TOKENWAY_* env vars)")
    serve.add_argument("--host", default=defaults.host, help="bind address [TOKENWAY_HOST] (default %(default)s)")
    serve.add_argument("--port", type=int, default=defaults.port, help="[TOKENWAY_PORT] (default %(default)s)")
    serve.add_argument("--workers", type=int, default=defaults.workers, help="processes [TOKENWAY_WORKERS]")
    serve.add_argument("--config", type=Path, default=defaults.config,
                       help="YAML config [TOKENWAY_CONFIG]; none: serve the embedded local model")
    serve.add_argument("--log-level", default=defaults.log_level, choices=["debug", "info", "warning", "error"],
                       help="[TOKENWAY_LOG_LEVEL]")
    serve.add_argument("--allow-open", action="store_true", default=defaults.allow_open,
                       help="serve without a master key on a non-loopback address [TOKENWAY_ALLOW_OPEN]")
    check = commands.add_parser("check-config", help="validate a config file and point at the bad line")
    check.add_argument("file", type=Path)
    commands.add_parser("bench", help="load-test an OpenAI-compatible endpoint (tokenway bench --help)")
    access_commands.add_commands(commands)
    return parser


def check_config(path: Path) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    deployments = sum(len(m.deployments) for m in config.models)
    print(f"{path}: OK — {len(config.models)} models, {deployments} deployments, hash {config.digest()}")
    return 0


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tokenway.http_protocol import server_options

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    master_key = os.environ.get("TOKENWAY_MASTER_KEY")
    if not master_key and not _is_loopback(args.host) and not args.allow_open:
        print(
            f"Refusing to serve on {args.host} without authentication. Set TOKENWAY_MASTER_KEY, "
            "bind to 127.0.0.1, or pass --allow-open if an open gateway is what you want.",
            file=sys.stderr,
        )
        return 2
    # The workers read their settings from the environment, so flags are exported there.
    os.environ["TOKENWAY_HOST"] = args.host
    os.environ["TOKENWAY_PORT"] = str(args.port)
    os.environ["TOKENWAY_LOG_LEVEL"] = args.log_level
    if args.config:
        os.environ["TOKENWAY_CONFIG"] = str(args.config.resolve())
    metrics_dir = None
    if args.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Workers share metric values through files here, so any worker's /metrics sees them all.
        metrics_dir = tempfile.mkdtemp(prefix="tokenway-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    models = ", ".join(m.name for m in config.models)
    print(
        f"tokenway: serving {models} on http://{args.host}:{args.port}/v1 ({args.workers} worker(s))", file=sys.stderr
    )
    uvicorn.run(
        "tokenway.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        lifespan="on",
        log_level=args.log_level,
        backlog=4096,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=Settings().shutdown_grace_s,  # type: ignore[arg-type]  # drain: tokenway/drain.py
        **server_options(),  # tokenway/http_protocol.py
    )
    if metrics_dir:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
