"""``tokenway prompts ...``: create, list, activate and roll back prompt versions.

Works on the same store the gateway uses (``TOKENWAY_DATABASE_URL``, else SQLite in
``TOKENWAY_DATA_DIR``); running gateways see a change within ``prompts.refresh_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from tokenway.errors import GatewayError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenway prompts", description="Prompt versions kept in the database.")
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create the next version of a prompt (version 1 makes it)")
    create.add_argument("id")
    create.add_argument("--system", help="the system part; {{name}} marks a variable")
    create.add_argument("--user", help="the user part; {{name}} marks a variable")
    create.add_argument("--system-file", type=Path, help="read the system part from this file")
    create.add_argument("--user-file", type=Path, help="read the user part from this file")
    create.add_argument("--note", help="why this version exists")
    create.add_argument("--activate", action="store_true", help="make it the active version at once")
    listing = actions.add_parser("list", help="every prompt, or one prompt's versions")
    listing.add_argument("id", nargs="?")
    activate = actions.add_parser("activate", help="make a version the active one")
    activate.add_argument("id")
    activate.add_argument("version", type=int)
    rollback = actions.add_parser("rollback", help="make the previously active version active again")
    rollback.add_argument("id")
    return parser


def main(argv: list[str]) -> int:
    from tokenway.config import SettingsError, load_settings

    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run(args, load_settings()))
    except SettingsError as exc:
        print(f"tokenway prompts: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # a template with no part
        print(f"tokenway prompts: {exc.errors()[0]['msg'].removeprefix('Value error, ')} "
              "(--system/--user, or --system-file/--user-file).", file=sys.stderr)
        return 2
    except GatewayError as exc:  # an unknown prompt or version, nothing to roll back to
        print(f"tokenway prompts: {exc.message}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, settings: object) -> int:
    from tokenway.observability.logging import JsonLog
    from tokenway.prompts.service import Prompts
    from tokenway.prompts.store import open_prompt_store
    from tokenway.prompts.templates import PromptTemplate

    prompts = Prompts(open_prompt_store(settings), JsonLog(level="error"))  # type: ignore[arg-type]
    await prompts.store.start()
    try:
        await prompts.refresh()
        if args.action == "create":
            system = args.system_file.read_text() if args.system_file else args.system
            user = args.user_file.read_text() if args.user_file else args.user
            template = PromptTemplate(system=system, user=user, note=args.note)
            shown = (await prompts.create(args.id, template, activate=args.activate)).public(args.activate)
            print(json.dumps(shown, indent=2))
        elif args.action == "list" and args.id is None:
            _table(prompts.book.summary(), ["id", "active_version", "versions", "latest_version"])
        elif args.action == "list":
            _table(prompts.book.listing(args.id), ["version", "active", "variables", "note"])
        elif args.action == "activate":
            print(json.dumps((await prompts.activate(args.id, args.version)).public(True), indent=2))
        else:
            print(json.dumps((await prompts.rollback(args.id)).public(True), indent=2))
    finally:
        await prompts.store.aclose()
    return 0


def _table(rows: list[dict[str, object]], columns: list[str]) -> None:
    from tokenway.jobs.cli import _table as print_table  # a rich table on a terminal, plain columns otherwise

    print_table(columns, [[", ".join(map(str, v)) if isinstance(v, list) else v for v in (row.get(c) for c in columns)]
                          for row in rows])
