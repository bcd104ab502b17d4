"""``tiergate deployments``: every deployment's health, as each live process sees it.

Each gateway and worker publishes its view with its heartbeat (``processes.deployments``);
this command reads those views, so it shows what the processes doing the work observe.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit

from app.settings import MOCK_UPSTREAM, Settings
from app.store.db import create_engine
from app.store.embedded import resolve_database
from app.store.presence import process_views
from app.vocabulary import DeploymentState


def cmd_deployments(args: argparse.Namespace, settings: Settings) -> int:
    """Print one line per deployment (``--json``: the processes' raw views)."""
    return asyncio.run(_show(settings, as_json=args.json))


async def _show(settings: Settings, *, as_json: bool) -> int:
    url = resolve_database(settings.database_url, settings.home)
    engine = create_engine(url, pool_size=1, max_overflow=0, application_name="tiergate-cli")
    try:
        views = await process_views(engine, fresh_s=3 * settings.limits.heartbeat_s)
    finally:
        await engine.dispose()
    if as_json:
        print(json.dumps([{**v, "last_seen_at": str(v["last_seen_at"])} for v in views], indent=2))
        return 0
    seen: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {}
    for view in views:
        for entry in view["deployments"] or []:
            seen.setdefault((entry["model"], entry["deployment"]), []).append((view["id"], entry))
    print(f"{len(views)} live process(es) reporting")
    rows = [("MODEL", "DEPLOYMENT", "WHERE", "STATE", "IN FLIGHT", "CALLS", "LAST ERROR")]
    for model in settings.models.values():
        for deployment in model.deployments:
            reports = seen.get((model.name, deployment.name), [])
            rows.append(
                (
                    model.name,
                    deployment.name,
                    _where(deployment.upstream),
                    _state(reports),
                    str(sum(e["in_flight"] for _, e in reports)),
                    str(sum(e["calls"] for _, e in reports)),
                    next((e["last_error"] for _, e in reports if e.get("last_error")), "") or "",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


def _where(upstream: str) -> str:
    """The deployment's host and port (an admin's view: addresses, never keys)."""
    if upstream == MOCK_UPSTREAM:
        return "in-process mock"
    parts = urlsplit(upstream)
    return parts.netloc.rpartition("@")[2] or upstream


def _state(reports: list[tuple[str, dict[str, Any]]]) -> str:
    """``healthy`` when every process agrees, else each state with its processes."""
    if not reports:
        return "no process reporting"
    now = time.time()
    states: dict[str, list[str]] = {}
    for process, entry in reports:
        state = entry["state"]
        if state == DeploymentState.OUT and entry.get("out_until"):
            state = f"out {max(0.0, entry['out_until'] - now):.0f}s"
        states.setdefault(state, []).append(process)
    if len(states) == 1:
        return next(iter(states))
    return ", ".join(f"{state} ({len(ids)})" for state, ids in sorted(states.items()))


def add_parser(sub: Any) -> None:
    """Add ``deployments`` to the ``tiergate`` parser's subcommands."""
    parser = sub.add_parser("deployments", help="each deployment's health, as processes see it")
    parser.add_argument("--json", action="store_true", help="every process's raw view")
    parser.set_defaults(func=cmd_deployments)
