"""One gateway on a throw-away embedded PostgreSQL, with the mock provider: what most
benchmarks start with."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.testing.config import write_config
from app.testing.postgres import DatabaseFactory, database_server
from app.testing.processes import Gateway, create_key, start_gateway, start_mock_upstream


@dataclass(frozen=True)
class Stack:
    """The running pieces: ``upstream`` is the mock's base URL (no ``/v1``), ``db`` the
    gateway's database (libpq URL), ``key`` a secret of the key ``bench``."""

    work: Path
    upstream: str
    factory: DatabaseFactory
    config: Path
    db: str
    key: str
    gateway: Gateway


@contextlib.contextmanager
def bench_stack(
    models: Callable[[str], list[dict[str, Any]]],
    limits: dict[str, Any] | None = None,
    *,
    worker: bool = True,
) -> Iterator[Stack]:
    """Start the mock provider, a database and a gateway (with its in-process worker unless
    ``worker`` is false) configured with ``models(upstream_v1_url)``; stop them all after."""
    work = Path(tempfile.mkdtemp(prefix="tiergate-bench-"))
    processes = []
    with database_server(work / "home") as factory:
        try:
            upstream, mock = start_mock_upstream(work / "mock.log")
            processes.append(mock)
            config = write_config(work / "tiergate.yaml", models(f"{upstream}/v1"), limits)
            db = factory.create().libpq()
            key = create_key(db, "bench")
            gateway = start_gateway(
                database_url=db, config=config, log=work / "gw.log", worker=worker
            )
            processes.append(gateway.process)
            yield Stack(work, upstream, factory, config, db, key, gateway)
        finally:
            for process in processes:
                process.stop()
