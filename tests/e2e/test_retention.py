"""Retention, as an admin sees it: past its days a response is a 404 through the SDK, and
``tiergate prune`` shows (``--dry-run``) and deletes what is past retention."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import psycopg
import pytest
from openai.types.responses import Response

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.processes import Gateway, base_env, start_gateway


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [],
        {"retention": {"requests_days": 30, "files_days": 30, "events_days": 7}},
    )


@pytest.fixture(scope="module")
def gateway(
    database: DatabaseURL, config: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gw = start_gateway(
        database_url=database.libpq(),
        config=config,
        log=tmp_path_factory.mktemp("logs") / "gateway.log",
    )
    yield gw
    gw.process.stop()


def prune(database: DatabaseURL, config: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "prune", *args],
        env=base_env(DATABASE_URL=database.libpq(), TIERGATE_CONFIG=str(config)),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout


def test_past_retention_a_response_is_gone_and_prune_deletes_it(
    client: openai.OpenAI, database: DatabaseURL, config: Path, db: psycopg.Connection
):
    old = client.responses.create(model="mock", input="old news", service_tier="flex")
    recent = client.responses.create(model="mock", input="fresh", service_tier="flex")
    Response.model_validate(client.responses.retrieve(old.id).model_dump())
    db.execute(
        "UPDATE requests SET created_at = now() - interval '31 days' WHERE id = %s", (old.id,)
    )
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(old.id)  # gone for the client at once, like a deleted one
    assert client.responses.retrieve(recent.id).output_text == "echo: fresh"

    dry = prune(database, config, "--dry-run")
    assert "requests  1 past retention" in dry and "dry run: nothing deleted" in dry
    assert db.execute("SELECT count(*) FROM requests WHERE id = %s", (old.id,)).fetchone() == (1,)

    prune(database, config)
    assert db.execute("SELECT count(*) FROM requests WHERE id = %s", (old.id,)).fetchone() == (0,)
    assert "requests  0 past retention" in prune(database, config, "--dry-run")
    assert client.responses.retrieve(recent.id).status == "completed"


def test_prune_deletes_a_streamed_responses_events(
    client: openai.OpenAI, database: DatabaseURL, config: Path, db: psycopg.Connection
):
    stream = client.responses.create(model="mock", input="old stream", background=True, stream=True)
    rid = stream.response.headers["x-request-id"]
    assert list(stream)[-1].type == "response.completed"
    count = "SELECT count(*) FROM response_events WHERE response_id = %s"
    assert db.execute(count, (rid,)).fetchone()[0] > 3
    db.execute("UPDATE requests SET created_at = now() - interval '31 days' WHERE id = %s", (rid,))
    prune(database, config)
    assert db.execute(count, (rid,)).fetchone() == (0,)
