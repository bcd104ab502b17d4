"""A worker SIGKILLed in the middle of a background stream: the events it stored stay, the
rescued attempt goes on numbering after them, and a reader that resumes sees every stored
event once, in order, to the final one (what docs/api.md says a crash can lose: only the
events not flushed yet)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psycopg
import pytest
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.processes import Gateway, start_gateway, start_worker
from tests.e2e.conftest import row

EVENT: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, mock_upstream: str) -> Path:
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [{"name": "remote", "upstream": f"{mock_upstream}/v1", "timeout_s": 60}],
        {"heartbeat_s": 0.5, "stalled_after_s": 2, "maintenance_every_s": 1},
    )


@pytest.fixture(scope="module")
def gateway(
    database: DatabaseURL, config: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gw = start_gateway(
        database_url=database.libpq(),
        config=config,
        log=tmp_path_factory.mktemp("logs") / "gw.log",
        worker=False,
    )
    yield gw
    gw.process.stop()


def test_a_killed_worker_s_stream_resumes_on_another(
    client: openai.OpenAI,
    database: DatabaseURL,
    config: Path,
    db: psycopg.Connection,
    mock_upstream: str,
    tmp_path: Path,
):
    first = start_worker(database_url=database.libpq(), config=config, log=tmp_path / "w1.log")
    second = None
    try:
        stream = client.responses.create(
            model="remote", input="mock:hold=crash-1 survived words", background=True, stream=True
        )
        seen = []
        for event in stream:
            seen.append(EVENT.validate_python(event.model_dump()))
            if event.type == "response.in_progress":
                break  # stored: the upstream holds after its first event
        stream.close()
        first.kill()
        httpx.post(mock_upstream + "/_mock/release/crash-1").raise_for_status()
        second = start_worker(database_url=database.libpq(), config=config, log=tmp_path / "w2.log")
        rest = [
            EVENT.validate_python(e.model_dump())
            for e in client.responses.retrieve(
                seen[-1].response.id, stream=True, starting_after=seen[-1].sequence_number
            )
        ]
    finally:
        first.stop()
        if second is not None:
            second.stop()
    events = seen + rest
    assert [e.sequence_number for e in events] == list(range(len(events)))
    starts = [i for i, e in enumerate(events) if e.type == "response.in_progress"]
    assert len(starts) == 2 and events[-1].type == "response.completed"
    final = events[-1].response
    deltas = "".join(e.delta for e in events[starts[1] :] if e.type == "response.output_text.delta")
    assert deltas == final.output_text == "echo: mock:hold=crash-1 survived words"
    assert row(db, final.id)["attempts"] == 2
