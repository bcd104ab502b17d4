"""docs/operations.md's backup, for real: pg_dump of a live tiergate database (custom format),
pg_restore into a fresh database, a new gateway and worker on it.

What was finished before the dump is served by id (a realtime and a background Response, a
Batch with its output file), the old API key still works, and what was still queued or
running (background requests and a batch whose model's upstream was down, retried with
backoff) resumes on the new processes and completes once the upstream answers.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types import Batch
from openai.types.responses import Response

from app.testing.config import write_config
from app.testing.postgres import DatabaseFactory, postgres_tool
from app.testing.processes import Gateway, create_key, free_port, start_gateway
from tests.support.batches import responses_line, start_batch
from tests.support.waiting import wait_until

FINAL = ("completed", "failed", "cancelled", "expired")
LIMITS = {
    "heartbeat_s": 0.5,
    "stalled_after_s": 2,
    "maintenance_every_s": 1,
    "flex_poll_s": 0.5,
    "retry_base_s": 0.5,
    "retry_max_s": 1.0,
    "batch_chunk": 10,
}


def config(path: Path, mock_upstream: str, held_upstream: str) -> Path:
    return write_config(
        path,
        [
            {"name": "remote", "upstream": f"{mock_upstream}/v1", "flex_concurrency": 8},
            # Retried until the upstream answers (the window is an hour).
            {"name": "held", "upstream": held_upstream, "max_attempts": 1000, "timeout_s": 5},
        ],
        LIMITS,
    )


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
def started() -> Iterator[list[Gateway]]:
    gateways: list[Gateway] = []
    yield gateways
    for gateway in gateways:
        gateway.process.stop()


def fetch(gateway: Gateway, key: str, path: str) -> dict:  # type: ignore[type-arg]
    answer = httpx.get(gateway.api + path, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_a_restored_backup_serves_the_old_answers_and_finishes_the_pending_work(
    databases: DatabaseFactory,
    mock_upstream: str,
    tmp_path: Path,
    logs: Path,
    started: list[Gateway],
):
    source = databases.create()
    down = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    before = start_gateway(
        database_url=source.libpq(),
        config=config(tmp_path / "before.yaml", mock_upstream, down),
        log=logs / "before.log",
    )
    started.append(before)
    key = create_key(source.libpq(), "backup")
    client = openai.OpenAI(base_url=before.api, api_key=key, max_retries=0, timeout=60)

    # Finished before the backup: a realtime call, a background one, a Batch API batch.
    realtime = client.responses.create(model="remote", input="realtime before")
    assert realtime.status == "completed"
    background = client.responses.create(
        model="remote", input="background before", background=True, service_tier="flex"
    )
    wait_until(lambda: client.responses.retrieve(background.id).status == "completed", "background")
    done_batch = start_batch(client, [responses_line(f"d{i}", f"done {i}") for i in range(4)])
    wait_until(lambda: client.batches.retrieve(done_batch.id).status == "completed", "batch", 60)
    # Pending at the backup: background requests and a batch of a model whose upstream is down.
    held = [
        client.responses.create(
            model="held", input=f"held {i}", background=True, service_tier="flex"
        ).id
        for i in range(3)
    ]
    held_batch = start_batch(
        client, [responses_line(f"h{i}", f"held line {i}", model="held") for i in range(3)]
    )

    def tried() -> bool:
        rows = [client.responses.retrieve(rid) for rid in held]
        batch = client.batches.retrieve(held_batch.id)
        return batch.status == "in_progress" and all(
            r.status in ("queued", "in_progress") for r in rows
        )

    wait_until(tried, "the held work to be queued and tried", 60)

    # The backup, online: the gateway and its worker keep running (pg_dump reads one snapshot).
    dump = tmp_path / "tiergate.dump"
    subprocess.run(
        [str(postgres_tool("pg_dump", source)), "--format=custom", f"--file={dump}",
         f"--dbname={source.libpq()}"],
        check=True, timeout=120,
    )  # fmt: skip
    before.process.stop()  # the database server is "lost" with everything on it

    # The restore, into a fresh empty database.
    restored = databases.create_empty()
    subprocess.run(
        [str(postgres_tool("pg_restore", restored)), "--no-owner", "--no-privileges",
         "--exit-on-error", "--single-transaction", f"--dbname={restored.libpq()}", str(dump)],
        check=True, timeout=120,
    )  # fmt: skip

    # New processes on the restored database; the held model's upstream answers now.
    after = start_gateway(
        database_url=restored.libpq(),
        config=config(tmp_path / "after.yaml", mock_upstream, f"{mock_upstream}/v1"),
        log=logs / "after.log",
    )
    started.append(after)
    client = openai.OpenAI(base_url=after.api, api_key=key, max_retries=0, timeout=60)

    # The old answers, by id, as OpenAI's types read them.
    for response_id, text in [
        (realtime.id, "realtime before"),
        (background.id, "background before"),
    ]:
        old = Response.model_validate(fetch(after, key, f"/responses/{response_id}"))
        assert old.status == "completed" and old.output_text == f"echo: {text}"
        assert client.responses.retrieve(response_id).output_text == f"echo: {text}"
    old_batch = Batch.model_validate(fetch(after, key, f"/batches/{done_batch.id}"))
    assert old_batch.status == "completed" and old_batch.request_counts is not None
    assert old_batch.request_counts.completed == 4 and old_batch.output_file_id
    lines = [
        json.loads(x) for x in client.files.content(old_batch.output_file_id).text.splitlines()
    ]
    assert [x["custom_id"] for x in lines] == [f"d{i}" for i in range(4)]

    # The pending work resumes and completes.
    def finished() -> bool:
        return all(client.responses.retrieve(rid).status in FINAL for rid in held) and (
            client.batches.retrieve(held_batch.id).status in FINAL
        )

    wait_until(finished, "the held work to finish after the restore", 120)
    for i, rid in enumerate(held):
        answer = Response.model_validate(fetch(after, key, f"/responses/{rid}"))
        assert answer.status == "completed", answer.error
        assert answer.output_text == f"echo: held {i}"
    batch = Batch.model_validate(fetch(after, key, f"/batches/{held_batch.id}"))
    assert batch.status == "completed" and batch.request_counts is not None
    assert batch.request_counts.completed == 3 and batch.output_file_id
    lines = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert {x["custom_id"]: x["response"]["status_code"] for x in lines} == {
        f"h{i}": 200 for i in range(3)
    }
