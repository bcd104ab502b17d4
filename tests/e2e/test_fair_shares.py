"""Fair shares of the flex tier: a key's backlog does not hold another key's calls back.

One model with 4 slots per worker process and a mock provider that takes 100 ms a call. Each
batch job claims at most the model's slots of lines and a batch runs 4 jobs, so a batch keeps
up to 16 lines waiting for the 4 slots. First come, first served, another key's flex call
would wait behind all of them; served fairly, it takes the next free slot.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import psycopg
import pytest
from openai.types.responses import Response

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.processes import Gateway, create_key
from tests.support.batches import chat_line, start_batch
from tests.support.waiting import wait_until

SLOTS = 4
SLOW = "mock:sleep_ms=100"


@pytest.fixture(scope="module")
def gateway_config(tmp_path_factory: pytest.TempPathFactory, mock_upstream: str) -> Path:
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [{"name": "shared", "upstream": f"{mock_upstream}/v1", "flex_concurrency": SLOTS}],
        {"batch_jobs": 4, "batch_chunk": 16, "max_batch_lines": 1000, "heartbeat_s": 0.5},
    )


def sdk(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api, api_key=key, max_retries=0, timeout=120)


def completed(db: psycopg.Connection, batch_id: str) -> int:
    row = db.execute(
        "SELECT count(*) FROM requests WHERE batch_id = %s AND status = 'completed'", (batch_id,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def arrivals(mock_upstream: str, key: str) -> list[float]:
    """When each call carrying ``key=KEY`` reached the mock provider (unix seconds)."""
    attempts = httpx.get(f"{mock_upstream}/_mock/attempts/{key}").json()["attempts"]
    return [float(a["at"]) for a in attempts]


def test_another_keys_flex_call_takes_the_next_free_slot(
    gateway: Gateway, database: DatabaseURL, db: psycopg.Connection, mock_upstream: str
):
    alice = sdk(gateway, create_key(database.libpq(), "fair-alice"))
    bob = sdk(gateway, create_key(database.libpq(), "fair-bob"))
    line = f"{SLOW},key=fair-alice"
    batch = start_batch(alice, [chat_line(f"a-{i}", line, model="shared") for i in range(300)])
    wait_until(lambda: completed(db, batch.id) >= 2 * SLOTS, "alice's batch under way")

    answer = bob.responses.create(model="shared", input=f"{SLOW},key=fair-bob", service_tier="flex")
    Response.model_validate(answer.model_dump())
    assert answer.status == "completed"
    claimed = db.execute(
        "SELECT extract(epoch FROM started_at) FROM requests WHERE id = %s", (answer.id,)
    ).fetchone()
    assert claimed is not None
    (bob_sent,) = arrivals(mock_upstream, "fair-bob")
    # Alice's calls that got a slot after bob's call was claimed and waited for one: fair,
    # bob takes the next free slot (at most the slots being handed out at that moment); first
    # come, first served, he would wait behind the up to 16 lines her jobs hold in the queue.
    ahead = [t for t in arrivals(mock_upstream, "fair-alice") if float(claimed[0]) < t < bob_sent]
    assert len(ahead) <= SLOTS, f"{len(ahead)} of alice's calls went first"
    assert completed(db, batch.id) < 300  # the batch was still running throughout
    alice.batches.cancel(batch.id)


def progress_ratio(db: psycopg.Connection, one: str, other: str, lines: int) -> float:
    """Lines ``other`` finished per line of ``one`` while ``one`` finished ``lines`` more,
    measured once both are under way (so their start times do not count)."""
    wait_until(
        lambda: completed(db, one) >= 2 * SLOTS and completed(db, other) >= 2 * SLOTS,
        "both batches under way",
    )
    one_from, other_from = completed(db, one), completed(db, other)
    wait_until(lambda: completed(db, one) >= one_from + lines, f"{lines} more lines")
    return (completed(db, other) - other_from) / (completed(db, one) - one_from)


def test_two_keys_batches_progress_at_the_same_rate_and_weights_tilt_it(
    gateway: Gateway, database: DatabaseURL, db: psycopg.Connection
):
    carol = sdk(gateway, create_key(database.libpq(), "fair-carol"))
    dave = sdk(gateway, create_key(database.libpq(), "fair-dave"))
    heavy = sdk(gateway, create_key(database.libpq(), "fair-heavy", options=["--weight", "3"]))
    lines = [chat_line(f"l-{i}", SLOW, model="shared") for i in range(200)]

    first, second = start_batch(carol, lines), start_batch(dave, lines)
    ratio = progress_ratio(db, first.id, second.id, 60)
    assert 0.8 <= ratio <= 1.25, ratio
    carol.batches.cancel(first.id)
    dave.batches.cancel(second.id)

    weighted, light = start_batch(heavy, lines), start_batch(dave, lines)
    # Weight 3 against 1: about one of the other key's lines for three of the heavy key's.
    ratio = progress_ratio(db, weighted.id, light.id, 90)
    assert 0.2 <= ratio <= 0.5, ratio
    heavy.batches.cancel(weighted.id)
    dave.batches.cancel(light.id)
