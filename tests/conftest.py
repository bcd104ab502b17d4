"""Shared fixtures: real PostgreSQL, real servers on loopback, real ``openai`` clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.postgres import DatabaseFactory, database_server
from app.testing.processes import Process, start_mock_upstream


@pytest.fixture(scope="session")
def databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseFactory]:
    """Embedded PostgreSQL (unless ``DATABASE_URL`` is set) with a migrated template."""
    with database_server(tmp_path_factory.mktemp("pghome")) as factory:
        yield factory


@pytest.fixture(scope="module")
def database(databases: DatabaseFactory) -> DatabaseURL:
    """A fresh, migrated database for one test module."""
    return databases.create()


@pytest.fixture(scope="session")
def mock_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``tiergate mock-upstream`` as its own server process; yields its base URL."""
    url, process = start_mock_upstream(tmp_path_factory.mktemp("logs") / "mock-upstream.log")
    yield url
    process.stop()


@pytest.fixture(scope="module")
def gateway_config(tmp_path_factory: pytest.TempPathFactory, mock_upstream: str) -> Path:
    """Models: ``mock`` (built in, in-process) and ``remote``/``other``/``slow-batch`` (the
    mock server)."""
    upstream = f"{mock_upstream}/v1"
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [
            {
                "name": "remote",
                "upstream": upstream,
                "upstream_model": "remote-upstream",
                "api_key_env": "TIERGATE_TEST_PROVIDER_KEY",
                "flex_concurrency": 4,
                "max_attempts": 3,
                "timeout_s": 5,
            },
            {"name": "other", "upstream": upstream},
            {"name": "slow-batch", "upstream": upstream, "flex_concurrency": 2},
        ],
        {
            "max_body_bytes": 65536,
            # Failures these tests ask the mock for are per request, not an unhealthy provider:
            # the circuit breaker (tests/e2e/test_fleet.py) must not take it out of rotation.
            "health": {"failures_to_trip": 1000},
            "retry_base_s": 0.05,
            "retry_max_s": 0.5,
            "waiter_recheck_s": 1.0,
            "stream_keepalive_s": 0.3,
            "maintenance_every_s": 1,
            "realtime_row_after_s": 0.5,
            "batch_chunk": 16,
            "max_batch_lines": 100,
            "max_file_bytes": 5000000,
            "batch_windows": {"24h": 86400, "4s": 4},
        },
    )


def stop_all(processes: list[Process]) -> None:
    for process in processes:
        process.stop()
