"""``tokenway keys ...`` and ``tokenway usage``: work on the key table and ledger directly.

They open the same store the gateway uses (``TOKENWAY_DATABASE_URL``, else SQLite in
``TOKENWAY_DATA_DIR``); running gateways see key changes within about a second (they poll).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from pydantic import ValidationError


def add_commands(commands: Any) -> None:
    keys = commands.add_parser("keys", help="create, list, update and revoke virtual API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key; its secret is printed once")
    _key_fields(create)
    actions.add_parser("list", help="list keys (never their secrets)")
    update = actions.add_parser("update", help="change a key's settings")
    update.add_argument("id")
    _key_fields(update)
    revoke = actions.add_parser("revoke", help="revoke a key (running gateways refuse it within a second)")
    revoke.add_argument("id")
    usage = commands.add_parser("usage", help="usage and cost from the ledger")
    usage.add_argument("--group-by", choices=["key", "team", "model", "day"], default="key")
    usage.add_argument("--days", type=float, default=30.0, help="how far back (default %(default)s)")
    usage.add_argument("--key-id")
    usage.add_argument("--team")


def _key_fields(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name")
    parser.add_argument("--owner")
    parser.add_argument("--team")
    parser.add_argument("--models", help="comma-separated model names the key may use (default: all)")
    parser.add_argument("--rpm", type=int, help="requests per minute")
    parser.add_argument("--tpm", type=int, help="tokens per minute")
    parser.add_argument("--max-parallel", type=int, help="requests in flight at once")
    parser.add_argument("--max-streams", type=int,
                        help="streams in flight at once (default: limits.max_streams_per_key)")
    parser.add_argument("--budget", help="e.g. 5.00/day, 100/month, 20/total")
    parser.add_argument("--guards", help="comma-separated guard profiles (config guards.profiles) on top of the "
                                         "model's; checked against TOKENWAY_CONFIG when it is set; '' clears them")
    parser.add_argument("--structured-output", choices=["validate", "buffer"],
                        help="buffer: this key's JSON and tool-call streams are checked and retried before a byte "
                             "is sent (docs/structured-output.md)")
    parser.add_argument("--prompt", help="name or name@3: a prompt version this key's chat requests run with")
    parser.add_argument("--expires-in-days", type=float)
    parser.add_argument("--label", action="append", default=[], metavar="NAME=VALUE")


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        name: getattr(args, name)
        for name in ("name", "owner", "team", "rpm", "tpm", "max_parallel", "max_streams", "budget",
                     "structured_output", "prompt")
        if getattr(args, name) is not None
    }
    if args.models:
        out["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.guards is not None:
        out["guards"] = [g.strip() for g in args.guards.split(",") if g.strip()]
    if args.expires_in_days is not None:
        out["expires_at"] = time.time() + args.expires_in_days * 86400
    if args.label:
        out["labels"] = dict(label.split("=", 1) for label in args.label)
    return out


def run(args: argparse.Namespace) -> int:
    from tokenway.config import SettingsError, load_settings

    try:
        return asyncio.run(_run(args, load_settings()))
    except (SettingsError, ValidationError) as exc:
        print(exc)
        return 2
    except LookupError as exc:
        print(exc.args[0])
        return 1


async def _run(args: argparse.Namespace, settings: Any) -> int:
    from tokenway.access import open_database
    from tokenway.keys import key_record, new_key
    from tokenway.stores.base import KeyRecord

    db = open_database(settings)
    await db.start()
    try:
        if args.command == "usage":
            until = time.time() + 1
            rows = await db.usage_summary(args.group_by, until - args.days * 86400, until,
                                          key_id=args.key_id, team=args.team)
            _table(rows, [args.group_by, "requests", "prompt_tokens", "completion_tokens", "cost_usd"])
        elif args.action == "create":
            secret, key_id = new_key()
            record = key_record(secret, key_id, **_checked(_fields(args), settings))
            await db.put_key(record)
            print(json.dumps({"key": secret, **record.public()}, indent=2))
            print("Store the key now: it is not shown again.")
        elif args.action == "list":
            _table([r.public() for r in await db.list_keys()],
                   ["id", "name", "owner", "team", "models", "rpm", "tpm", "budget", "revoked"])
        else:
            existing = await db.get_key(args.id)
            if existing is None:
                raise LookupError(f"No key with id {args.id!r}; see `tokenway keys list`.")
            changes = {"revoked": True} if args.action == "revoke" else _checked(_fields(args), settings)
            updated = KeyRecord.model_validate({**existing.model_dump(), **changes})
            await db.put_key(updated)
            print(json.dumps(updated.public(), indent=2))
    finally:
        await db.aclose()
    return 0


def _checked(fields: dict[str, Any], settings: Any) -> dict[str, Any]:
    """``fields``, once every guard profile they name is one the gateway's config defines."""
    if fields.get("guards") and settings.config is not None:
        from tokenway.config import load_config

        profiles = load_config(settings.config).guards.profiles
        for name in fields["guards"]:
            if name not in profiles:
                known = ", ".join(sorted(profiles)) or "none"
                raise LookupError(f"Unknown guard profile {name!r}: {settings.config} defines {known}.")
    return fields


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    def cell(value: Any) -> str:
        if isinstance(value, dict):
            return f"{value.get('amount')}/{value.get('period')}"
        if isinstance(value, list):
            return ",".join(map(str, value)) or "*"
        return "-" if value is None else str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
