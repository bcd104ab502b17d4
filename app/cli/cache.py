"""``tiergate cache clear [--model M] [--key NAME]`` and ``tiergate cache stats``.

Clearing deletes stored answers at once (every gateway and worker reads the table, so the
next call is a miss everywhere). ``--key`` takes a key's name or id; a name matches every key
that ever had it, revoked ones included.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from sqlalchemy import text

from app.cli.database import cli_engine
from app.settings import Settings
from app.store.cache import CacheStore

STATS = text(
    """
SELECT k.name AS key, c.model, count(*) AS entries,
       count(*) FILTER (WHERE c.expires_at <= now()) AS expired,
       coalesce(sum(c.hits), 0) AS hits, max(c.last_hit_at) AS last_hit_at
FROM cache_entries c JOIN api_keys k ON k.id = c.owner_key_id
GROUP BY k.name, c.model ORDER BY k.name, c.model
"""
)


def cmd_cache(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``cache clear`` or ``cache stats``."""
    return asyncio.run(_run(args, settings))


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    async with cli_engine(settings, "tiergate-cache") as engine:
        if args.action == "clear":
            gone = await CacheStore(engine).clear(model=args.model, key=args.key)
            scope = " ".join(
                part
                for part in (
                    f"of model {args.model}" if args.model else "",
                    f"of key {args.key}" if args.key else "",
                )
                if part
            )
            print(f"cleared {gone} cached answer{'s' if gone != 1 else ''} {scope}".rstrip())
            return 0
        async with engine.connect() as conn:
            rows = (await conn.execute(STATS)).all()
        if not rows:
            print("the cache is empty")
            return 0
        print(f"{'key':<20} {'model':<24} {'entries':>8} {'expired':>8} {'hits':>8}  last hit")
        for r in rows:
            last = r.last_hit_at.isoformat(timespec="seconds") if r.last_hit_at else "-"
            print(f"{r.key:<20} {r.model:<24} {r.entries:>8} {r.expired:>8} {r.hits:>8}  {last}")
        return 0


def add_parser(sub: Any) -> None:
    """Add ``cache`` to the ``tiergate`` parser's subcommands."""
    cache = sub.add_parser("cache", help="the response cache: clear it, or show what it holds")
    actions = cache.add_subparsers(dest="action", required=True)
    clear = actions.add_parser("clear", help="delete cached answers (all, or some)")
    clear.add_argument("--model", help="only this model's")
    clear.add_argument("--key", help="only this key's (name or id)")
    actions.add_parser("stats", help="entries and hits by key and model")
    cache.set_defaults(func=cmd_cache)
