"""End-to-end fixtures: ``tiergate serve`` under uvicorn, keys made by ``tiergate keys``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import psycopg
import pytest

from app.store.dburl import DatabaseURL
from app.testing.processes import Gateway, create_key, start_gateway

PROVIDER_SECRET = "sk-provider-secret-never-stored"


@pytest.fixture(scope="module")
def with_worker() -> bool:
    """Whether the module's gateway runs its in-process worker (a module may say no)."""
    return True


@pytest.fixture(scope="module")
def gateway(
    database: DatabaseURL,
    gateway_config: Path,
    with_worker: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    gw = start_gateway(
        database_url=database.libpq(),
        config=gateway_config,
        log=tmp_path_factory.mktemp("logs") / "gateway.log",
        worker=with_worker,
        env={"TIERGATE_TEST_PROVIDER_KEY": PROVIDER_SECRET},
    )
    yield gw
    gw.process.stop()


@pytest.fixture(scope="module")
def key(database: DatabaseURL) -> str:
    return create_key(database.libpq(), "alice")


@pytest.fixture(scope="module")
def other_key(database: DatabaseURL) -> str:
    return create_key(database.libpq(), "bob")


@pytest.fixture(scope="module")
def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api, api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def db(database: DatabaseURL) -> Iterator[psycopg.Connection]:
    """A plain SQL connection, as an admin would use."""
    with psycopg.connect(database.libpq(), autocommit=True) as conn:
        yield conn


def row(db: psycopg.Connection, request_id: str) -> dict:
    cur = db.execute("SELECT * FROM requests WHERE id = %s", (request_id,))
    names = [c.name for c in cur.description or []]
    found = cur.fetchone()
    assert found is not None, f"no row for {request_id}"
    return dict(zip(names, found, strict=True))
