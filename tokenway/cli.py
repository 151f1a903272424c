"""``tokenway``: serve, check-config, bench, cost, jobs. Every ``serve`` flag is also a ``TOKENWAY_*`` env var.

``serve`` builds one ``Settings`` (env vars, its flags on top) and passes it down: to the app
object with one worker; with several, uvicorn imports ``worker_app`` in each worker process,
which reads the same validated ``Settings`` back from one env var holding their JSON.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from tokenway.config import ConfigError, Limits, Settings, SettingsError, load_config, load_settings
from tokenway.usage import cli as access_commands

if TYPE_CHECKING:
    from tokenway.app import Gateway

# The parent's Settings as JSON, for the worker processes of ``serve --workers N``.
WORKER_SETTINGS_ENV = "TOKENWAY_WORKER_SETTINGS"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        from tokenway.bench.cli import main as bench_main

        sys.exit(bench_main(argv[1:]))
    if argv and argv[0] == "cost":
        from tokenway.cost.cli import main as cost_main

        sys.exit(cost_main(argv[1:]))
    if argv and argv[0] == "jobs":
        from tokenway.jobs.cli import main as jobs_main

        sys.exit(jobs_main(argv[1:]))
    if argv and argv[0] == "releases":
        from tokenway.releases.cli import main as releases_main

        sys.exit(releases_main(argv[1:]))
    if argv and argv[0] in ("prompts", "replay"):  # prompt versions; a recorded request sent again
        from tokenway.prompts.cli import main as prompts_main
        from tokenway.replay.cli import main as replay_main

        sys.exit((prompts_main if argv[0] == "prompts" else replay_main)(argv[1:]))
    if argv and argv[0] == "worker":
        from tokenway.jobs.celery_worker import main as worker_main

        sys.exit(worker_main(argv[1:]))
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
    # Flags not given stay out of the namespace, so the env var (or the Settings default) decides.
    serve = commands.add_parser("serve", help="run the gateway (flags override TOKENWAY_* env vars)",
                                argument_default=argparse.SUPPRESS)
    fields = Settings.model_fields
    serve.add_argument("--host", help=f"bind address [TOKENWAY_HOST] (default {fields['host'].default})")
    serve.add_argument("--port", type=int, help=f"[TOKENWAY_PORT] (default {fields['port'].default})")
    serve.add_argument("--workers", type=int,
                       help="processes; more than one needs TOKENWAY_REDIS_URL [TOKENWAY_WORKERS] (default 1)")
    serve.add_argument("--config", type=Path,
                       help="YAML config [TOKENWAY_CONFIG]; none: serve the embedded local model")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                       help=f"[TOKENWAY_LOG_LEVEL] (default {fields['log_level'].default})")
    serve.add_argument("--allow-open", action="store_true",
                       help="serve without a master key on a non-loopback address [TOKENWAY_ALLOW_OPEN]")
    check = commands.add_parser("check-config", help="validate a config file and point at the bad line")
    check.add_argument("file", type=Path)
    commands.add_parser("bench", help="load-test an OpenAI-compatible endpoint (tokenway bench --help)")
    commands.add_parser("cost", help="price traffic self-hosted against API models (tokenway cost --help)")
    commands.add_parser("jobs", help="submit and follow batches and async jobs on a gateway (tokenway jobs --help)")
    commands.add_parser("releases", help="compare release versions and shadows on a gateway (tokenway releases --help)")
    commands.add_parser("prompts", help="create, list, activate and roll back prompt versions (--help)")
    commands.add_parser("replay", help="send a recorded request again, side by side with the original (--help)")
    commands.add_parser("worker", help="run jobs for a fleet of gateways: a Celery worker (tokenway worker --help)")
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
    try:
        settings = load_settings(**{k: v for k, v in vars(args).items() if k in Settings.model_fields})
    except SettingsError as exc:
        print(f"tokenway serve: {exc}", file=sys.stderr)
        return 2
    if not settings.master_key and not _is_loopback(settings.host) and not settings.allow_open:
        print(
            f"Refusing to serve on {settings.host} without authentication. Set TOKENWAY_MASTER_KEY, "
            "bind to 127.0.0.1, or pass --allow-open if an open gateway is what you want.",
            file=sys.stderr,
        )
        return 2
    try:
        config = load_config(settings.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    models = ", ".join(m.name for m in config.models)
    print(
        f"tokenway: serving {models} on http://{settings.host}:{settings.port}/v1 ({settings.workers} worker(s))",
        file=sys.stderr,
    )
    if settings.workers == 1:
        from tokenway.app import create_app

        _run_uvicorn(create_app(settings, config), settings, config.limits)
        return 0
    return _serve_workers(settings, config.limits)


def _serve_workers(settings: Settings, limits: Limits) -> int:
    """Several worker processes, each with its own app from ``worker_app``; this one supervises."""
    from tokenway.observability.logging import JsonLog

    drain_dir = None
    if settings.drain_file is None:
        # POST /admin/drain reaches one worker; the file it creates here drains the others (tokenway/drain.py).
        drain_dir = tempfile.mkdtemp(prefix="tokenway-drain-")
        settings = settings.model_copy(update={"drain_file": Path(drain_dir) / "drain"})
    os.environ[WORKER_SETTINGS_ENV] = settings.model_dump_json()  # the workers are this process's children
    metrics_dir = None
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Workers share metric values through files here, so any worker's /metrics sees them all.
        metrics_dir = tempfile.mkdtemp(prefix="tokenway-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    # Each worker's app logs through its own JsonLog; this process has no app, so uvicorn's notes on
    # the workers (one died, one was restarted) get a JsonLog of their own.
    log = JsonLog(level=settings.log_level)
    log.capture_stdlib()
    try:
        _run_uvicorn(f"{__name__}:worker_app", settings, limits)
    finally:
        log.release_stdlib()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        if drain_dir:
            shutil.rmtree(drain_dir, ignore_errors=True)
    return 0


def worker_app() -> Gateway:
    """uvicorn's app factory in each worker process of ``serve --workers N``: the parent's Settings."""
    from tokenway.app import create_app

    return create_app(Settings.model_validate_json(os.environ[WORKER_SETTINGS_ENV]))


def _run_uvicorn(app: Gateway | str, settings: Settings, limits: Limits) -> None:
    import uvicorn

    from tokenway.http_protocol import server_options

    uvicorn.run(
        app,
        factory=isinstance(app, str),
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        lifespan="on",
        log_level=settings.log_level,
        backlog=4096,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]  # drain: tokenway/drain.py
        **server_options(limits),  # tokenway/http_protocol.py
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
