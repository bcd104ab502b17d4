"""``tiergate deployments``: every deployment's health, as each live process sees it, its
executor, and the open provider jobs of those that use a Batch API.

Each gateway and worker publishes its view with its heartbeat (``processes.deployments``);
this command reads those views, so it shows what the processes doing the work observe. The
provider jobs (``upstream_jobs``) are counted per deployment by one statement over the open
jobs only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit

from app.cli.database import cli_engine
from app.dashboard.pages import duration
from app.settings import MOCK_UPSTREAM, DeploymentConfig, Settings
from app.store.presence import process_views
from app.store.upstream_jobs import OpenJobs, UpstreamJobStore
from app.upstream.engine_watch import engine_summary
from app.vocabulary import DeploymentState, ExecutorKind

Reports = list[tuple[str, dict[str, Any]]]


def cmd_deployments(args: argparse.Namespace, settings: Settings) -> int:
    """Print one line per deployment, then the open provider jobs (``--json``: the same facts
    and the processes' raw views)."""
    views, jobs = asyncio.run(_read(settings))
    if args.json:
        print(json.dumps(as_json(settings, views, jobs), indent=2))
    else:
        print(as_text(settings, views, jobs))
    return 0


async def _read(settings: Settings) -> tuple[list[dict[str, Any]], list[OpenJobs]]:
    async with cli_engine(settings) as engine:
        views = [
            dict(v) for v in await process_views(engine, fresh_s=3 * settings.limits.heartbeat_s)
        ]
        jobs = await UpstreamJobStore(engine).open_by_deployment()
    return views, jobs


def _reports(views: list[dict[str, Any]]) -> dict[tuple[str, str], Reports]:
    seen: dict[tuple[str, str], Reports] = {}
    for view in views:
        for entry in view["deployments"] or []:
            seen.setdefault((entry["model"], entry["deployment"]), []).append((view["id"], entry))
    return seen


def _jobs(open_jobs: OpenJobs | None) -> dict[str, Any]:
    if open_jobs is None:
        return {"submitting": 0, "running": 0, "rows": 0, "oldest_running_s": None}
    return {
        "submitting": open_jobs.submitting,
        "running": open_jobs.running,
        "rows": int(open_jobs.rows or 0),
        "oldest_running_s": open_jobs.oldest_running_s,
    }


def deployments(
    settings: Settings, views: list[dict[str, Any]], jobs: list[OpenJobs]
) -> list[dict[str, Any]]:
    """Each configured deployment's facts; ``jobs`` (its open provider jobs) for those that
    use a Batch API or still have open jobs, else None."""
    seen = _reports(views)
    open_jobs = {(j.model, j.deployment): j for j in jobs}
    out = []
    for model in settings.models.values():
        for deployment in model.deployments:
            reports = seen.get((model.name, deployment.name), [])
            held = open_jobs.get((model.name, deployment.name))
            batch = deployment.executor == ExecutorKind.BATCH
            out.append(
                {
                    "model": model.name,
                    "deployment": deployment.name,
                    "where": _where(deployment.upstream),
                    "executor": str(deployment.executor),
                    "executor_text": deployment.executor_text(),
                    "executor_config": _executor_config(deployment),
                    "state": _state(reports),
                    "in_flight": sum(e["in_flight"] for _, e in reports),
                    "calls": sum(e["calls"] for _, e in reports),
                    "last_error": next(
                        (e["last_error"] for _, e in reports if e.get("last_error")), None
                    ),
                    "jobs": _jobs(held) if batch or held is not None else None,
                    "engine": engine_summary(
                        deployment, [e["engine"] for _, e in reports if e.get("engine")]
                    ),
                }
            )
    return out


def _executor_config(deployment: DeploymentConfig) -> dict[str, Any] | None:
    """The executor's own block (``flex:`` or ``batch:``; None for ``direct``)."""
    if deployment.executor == ExecutorKind.FLEX:
        return deployment.flex.model_dump(mode="json")
    if deployment.executor == ExecutorKind.BATCH:
        return deployment.batch.model_dump(mode="json")
    return None


def unconfigured_jobs(settings: Settings, jobs: list[OpenJobs]) -> list[OpenJobs]:
    """Open jobs of deployments this config no longer has (their pollers still finish them)."""
    known = {(m.name, d.name) for m in settings.models.values() for d in m.deployments}
    return [j for j in jobs if (j.model, j.deployment) not in known]


def as_json(
    settings: Settings, views: list[dict[str, Any]], jobs: list[OpenJobs]
) -> dict[str, Any]:
    return {
        "deployments": deployments(settings, views, jobs),
        "unconfigured_jobs": [
            {"model": j.model, "deployment": j.deployment, **_jobs(j)}
            for j in unconfigured_jobs(settings, jobs)
        ],
        "processes": [{**v, "last_seen_at": str(v["last_seen_at"])} for v in views],
    }


def as_text(settings: Settings, views: list[dict[str, Any]], jobs: list[OpenJobs]) -> str:
    """The deployments table, then (when a deployment uses a Batch API or a job is open) the
    open provider jobs per deployment."""
    facts = deployments(settings, views, jobs)
    lines = [f"{len(views)} live process(es) reporting"]
    # The ENGINE column only when some deployment declares its engine.
    engines = any(d["engine"] for d in facts)
    head = ("MODEL", "DEPLOYMENT", "WHERE", "EXECUTOR", "STATE", "IN FLIGHT", "CALLS")
    lines += _aligned(
        [(*head, *(("ENGINE",) if engines else ()), "LAST ERROR")]
        + [
            (
                d["model"],
                d["deployment"],
                d["where"],
                d["executor_text"],
                d["state"],
                str(d["in_flight"]),
                str(d["calls"]),
                *(((d["engine"] or {}).get("text", "-"),) if engines else ()),
                d["last_error"] or "",
            )
            for d in facts
        ]
    )
    held = [(d["model"], d["deployment"], d["jobs"]) for d in facts if d["jobs"] is not None]
    held += [(j.model, j.deployment, _jobs(j)) for j in unconfigured_jobs(settings, jobs)]
    if not held:
        return "\n".join(lines)
    lines += ["", "Open provider jobs (Batch API)"]
    lines += _aligned(
        [("MODEL", "DEPLOYMENT", "SUBMITTING", "RUNNING", "ROWS", "OLDEST RUNNING")]
        + [
            (
                model,
                deployment,
                str(j["submitting"]),
                str(j["running"]),
                f"{j['rows']:,}",
                "-" if j["oldest_running_s"] is None else duration(round(j["oldest_running_s"])),
            )
            for model, deployment, j in held
        ]
    )
    return "\n".join(lines)


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _where(upstream: str) -> str:
    """The deployment's host and port (an admin's view: addresses, never keys)."""
    if upstream == MOCK_UPSTREAM:
        return "in-process mock"
    parts = urlsplit(upstream)
    return parts.netloc.rpartition("@")[2] or upstream


def _state(reports: Reports) -> str:
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
    parser = sub.add_parser(
        "deployments", help="each deployment's health and executor, and open provider jobs"
    )
    parser.add_argument(
        "--json", action="store_true", help="the same facts, and every process's raw view"
    )
    parser.set_defaults(func=cmd_deployments)
