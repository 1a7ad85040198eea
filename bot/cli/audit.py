"""``scratchbot audit``: what admins did (reloads, settings, refusals included) and which checkpoints were loaded,
newest first, from the database the bot uses. The record `forget` and retention keep, to be read."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from typing import Any

from bot.cli.common import UserError, positive_int, settings_for

log = logging.getLogger(__name__)


def add_audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="show the admin audit log and the checkpoint loads", description=cmd_audit.__doc__)
    p.add_argument("--loads", action="store_true", help="the checkpoint loads instead of the audit log")
    p.add_argument("--platform", help="only this platform's entries (discord, slack, console, system)")
    p.add_argument("--tenant", help="only this guild's or workspace's entries")
    p.add_argument("--limit", type=positive_int, default=50, help="how many, newest first (default 50)")
    p.add_argument("--database-url", default=None, help="default: the database the settings name")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    """Print the admin audit log (or, with --loads, the checkpoint loads), newest first."""
    import asyncio

    from storage.db import StorageError, sqlite_file
    from storage.store import open_store

    settings = settings_for(args)
    url = args.database_url or settings.resolved_database_url
    try:
        database_file = sqlite_file(url)
    except StorageError as e:
        raise UserError(str(e)) from None
    if database_file is not None and not database_file.is_file():
        # Reading must not leave behind an empty database where the user mistyped a path.
        raise UserError(f"no database at {database_file}; point --database-url or SCRATCHBOT_DATA_DIR at the bot's one")

    async def read() -> list[Any]:
        async with open_store(url, settings.database_timeouts) as store:
            if args.loads:
                return await store.recent_checkpoint_loads(args.limit)
            return await store.audit_entries(platform=args.platform, tenant=args.tenant, limit=args.limit)

    try:
        entries = asyncio.run(read())
    except StorageError as e:
        raise UserError(str(e)) from None
    for entry in entries:
        print(json.dumps(asdict(entry), default=str, ensure_ascii=False) if args.json else _line(entry))
    if not entries and not args.json:
        print("nothing recorded yet")
    return 0


def _line(entry: Any) -> str:
    when = f"{entry.created_at:%Y-%m-%d %H:%M:%S} UTC"
    if hasattr(entry, "action"):  # an audit entry
        detail = " ".join(f"{k}={v}" for k, v in entry.detail.items())
        return f"{when}  {entry.platform}/{entry.tenant}  {entry.actor_id}  {entry.action} {entry.target}  {detail}"
    outcome = "loaded" if entry.succeeded else f"refused: {entry.detail}"
    return f"{when}  {entry.requested_by}  {entry.name}  {(entry.sha256 or '')[:12]}  {outcome}"
