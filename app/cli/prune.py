"""``tiergate prune [--dry-run]``: delete the history past ``limits.retention`` now.

The workers do the same in the background, a bounded part at each maintenance run; this
command is for a first clean-up of a large history, or to see what would go.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from tqdm import tqdm

from app.cli.database import cli_engine
from app.settings import Settings
from app.store.retention import KINDS, RetentionStore

WHAT = {
    "requests": "finished requests (single and realtime)",
    "batches": "finished Batch API batches (their lines go with them)",
    "files": "processed files no live batch reads",
    "expired": "files whose expires_after has passed (deleted whatever the retention)",
    "jobs": "procrastinate's finished jobs and their events",
    "webhooks": "finished webhook deliveries (delivered or given up)",
}


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    """Print what is past retention; without ``--dry-run``, delete it chunk by chunk."""
    return asyncio.run(_prune(settings, dry_run=args.dry_run))


async def _prune(settings: Settings, *, dry_run: bool) -> int:
    async with cli_engine(settings, "tiergate-prune") as engine:
        store = RetentionStore(engine, settings.limits.retention)
        counts = {kind: await store.count(kind) for kind in KINDS}
        for kind, count in counts.items():
            kept = (
                "kept for ever (no retention set)" if count is None else f"{count} past retention"
            )
            print(f"{kind:<9} {kept}: {WHAT[kind]}")
        if dry_run:
            print("dry run: nothing deleted")
            return 0
        for kind, count in counts.items():
            if not count:
                continue
            lines_total = 0
            with tqdm(total=count, desc=f"prune {kind}", unit="row") as bar:
                while True:
                    rows, lines = await store.prune_chunk(kind)
                    if not rows and not lines:
                        break
                    bar.update(rows)
                    if lines:
                        lines_total += lines
                        bar.set_postfix(lines=lines_total)
        return 0


def add_parser(sub: Any) -> None:
    """Add ``prune`` to the ``tiergate`` parser's subcommands."""
    prune = sub.add_parser("prune", help="delete history past limits.retention now")
    prune.add_argument("--dry-run", action="store_true", help="only print what would go")
    prune.set_defaults(func=cmd_prune)
