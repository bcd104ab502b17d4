"""The semantic cache end to end: prompts embedded by a tiergate model (the mock provider's
deterministic bag-of-words embeddings), nearest entries found by pgvector in PostgreSQL, and
served only after the verifier agrees they mean the same.

The mock echoes its input, so a served answer shows which prompt it was made for: a semantic
hit answers with the *stored* prompt's echo.
"""

from __future__ import annotations

import math
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import psycopg
import pytest
from openai.types.responses import Response

from app.mock.payloads import embedding_vector
from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.postgres import DatabaseFactory
from app.testing.processes import base_env, create_key, start_gateway
from tests.e2e.conftest import row
from tests.support.waiting import wait_until

MIN_SIMILARITY = 0.8  # low, so that the hard negatives below pass it: the verifier decides
DIM = 256  # asked of the embeddings model (the mock's default is 8)


@pytest.fixture(scope="module")
def gateway_config(tmp_path_factory: pytest.TempPathFactory, mock_upstream: str) -> Path:
    upstream = f"{mock_upstream}/v1"
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [
            {
                "name": "semantic",
                "upstream": upstream,
                "pricing": {"input_per_mtok": 3.0, "output_per_mtok": 15.0},
                "cache": {
                    "exact": True,
                    "semantic": {
                        "embedding_model": "embed",
                        "min_similarity": MIN_SIMILARITY,
                        "dimensions": DIM,
                    },
                },
            },
            {"name": "embed", "upstream": upstream, "endpoints": ["embeddings"]},
        ],
    )


def similarity(a: str, b: str) -> float:
    va, vb = embedding_vector(f"user: {a}", DIM), embedding_vector(f"user: {b}", DIM)
    return sum(x * y for x, y in zip(va, vb, strict=True)) / math.sqrt(
        sum(x * x for x in va) * sum(y * y for y in vb)
    )


def ask(client: openai.OpenAI, prompt: str, **extra: Any) -> tuple[Response, str | None]:
    raw = client.responses.with_raw_response.create(model="semantic", input=prompt, **extra)
    answer = Response.model_validate(raw.parse().model_dump())
    return answer, raw.headers.get("x-tiergate-cache")


def store(client: openai.OpenAI, db: psycopg.Connection, text: str, **extra: Any) -> Response:
    """Ask ``text`` (a miss) and wait until its answer and embedding are stored."""
    answer, said = ask(client, text, **extra)
    assert said == "miss"
    wait_until(
        lambda: db.execute(
            "SELECT 1 FROM cache_entries WHERE prompt = %s AND embedding IS NOT NULL",
            (f"user: {text}",),
        ).fetchone(),
        f"the answer to {text!r} to be stored with its embedding",
    )
    return answer


def unique(text: str) -> str:
    """``text`` with a token of its own, so tests never meet each other's entries."""
    return f"{text} Ref ZQ{uuid.uuid4().hex[:6].upper()}."


def test_a_rewording_is_a_verified_semantic_hit(client: openai.OpenAI, db: psycopg.Connection):
    ref = f"ZQ{uuid.uuid4().hex[:6].upper()}"
    stored = f"How do I reverse a list in Python? Ref {ref}."
    reworded = f"In Python, how do I reverse a list? Ref {ref}."
    first = store(client, db, stored)
    assert similarity(stored, reworded) >= MIN_SIMILARITY
    answer, said = ask(client, reworded)
    assert said == "semantic-hit"
    assert answer.output_text == first.output_text == f"echo: {stored}"
    hit = row(db, answer.id)
    assert hit["cache"] == "semantic-hit" and hit["cost_usd"] == Decimal(0)
    assert hit["cached_tokens"] == hit["input_tokens"]
    # The same words again are an exact hit, not a semantic one.
    _, said = ask(client, stored)
    assert said == "hit"


HARD_NEGATIVES = [
    ("How do I reverse a list in Python?", "How do I reverse a list in Java?"),
    ("Convert 5 km to miles.", "Convert 7 km to miles."),
    ("Is the museum open on Sunday?", "Is the museum not open on Sunday?"),
    (
        "How do I sort a list in ascending order in Python?",
        "How do I sort a list in descending order in Python?",
    ),
]


@pytest.mark.parametrize(("stored", "asked"), HARD_NEGATIVES)
def test_a_near_duplicate_with_another_meaning_is_refused(
    client: openai.OpenAI, db: psycopg.Connection, stored: str, asked: str
):
    ref = f"ZQ{uuid.uuid4().hex[:6].upper()}"
    stored, asked = f"{stored} Ref {ref}.", f"{asked} Ref {ref}."
    store(client, db, stored)
    # The embeddings put them close enough: only the verification keeps them apart.
    assert similarity(stored, asked) >= MIN_SIMILARITY
    answer, said = ask(client, asked)
    assert said == "miss"
    assert answer.output_text == f"echo: {asked}"


def test_other_tools_or_format_never_match(client: openai.OpenAI, db: psycopg.Connection):
    ref = f"ZQ{uuid.uuid4().hex[:6].upper()}"
    stored = f"Summarise the plot of Hamlet in two sentences. Ref {ref}."
    reworded = f"In two sentences, summarise the plot of Hamlet. Ref {ref}."
    store(client, db, stored)
    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}
    _, said = ask(client, reworded, tools=[tool])
    assert said == "miss"
    _, said = ask(client, reworded, text={"format": {"type": "json_object"}})
    assert said == "miss"
    _, said = ask(client, reworded)  # the same rewording, same tools and format: a hit
    assert said == "semantic-hit"


def test_another_key_never_gets_a_semantic_hit(
    gateway: Any, database: DatabaseURL, client: openai.OpenAI, db: psycopg.Connection
):
    ref = f"ZQ{uuid.uuid4().hex[:6].upper()}"
    stored = f"What is the capital city of France? Ref {ref}."
    store(client, db, stored)
    _, said = ask(client, stored.lower())
    assert said == "semantic-hit"
    other = openai.OpenAI(
        base_url=gateway.api, api_key=create_key(database.libpq(), "mallory"), max_retries=0
    )
    answer, said = ask(other, stored.lower())
    assert said == "miss" and answer.output_text == f"echo: {stored.lower()}"
    # mallory's own entry serves mallory; revoked and created again, the name starts empty.
    store(other, db, f"Which river flows through Paris? Ref {ref}.")
    _, said = ask(other, f"which river flows through paris? Ref {ref}.")
    assert said == "semantic-hit"
    subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "revoke", "mallory"],
        env=base_env(DATABASE_URL=database.libpq()),
        check=True,
        capture_output=True,
    )
    again = openai.OpenAI(
        base_url=gateway.api, api_key=create_key(database.libpq(), "mallory"), max_retries=0
    )
    _, said = ask(again, f"which river flows through paris? Ref {ref}.")
    assert said == "miss"


def test_without_pgvector_the_semantic_cache_is_off_and_exact_caching_works(
    databases: DatabaseFactory, gateway_config: Path, tmp_path: Path
):
    """A database migrated where pgvector was missing has no embedding column (migration
    0016 skips it): the gateway says so once and keeps the exact cache."""
    url = databases.create()
    with psycopg.connect(url.libpq(), autocommit=True) as conn:
        conn.execute("ALTER TABLE cache_entries DROP COLUMN embedding")
    log = tmp_path / "gateway.log"
    gw = start_gateway(database_url=url.libpq(), config=gateway_config, log=log)
    try:
        client = openai.OpenAI(
            base_url=gw.api, api_key=create_key(url.libpq(), "plain"), max_retries=0
        )
        text = unique("What is the boiling point of water at sea level?")
        _, said = ask(client, text)
        assert said == "miss"
        wait_until(lambda: ask(client, text)[1] == "hit", "an exact hit")
        _, said = ask(client, text.lower())
        assert said == "miss"
    finally:
        gw.process.stop()
    lines = [line for line in log.read_text().splitlines() if "semantic cache is off" in line]
    assert len(lines) == 1 and "pgvector" in lines[0] and "exact caching still works" in lines[0]
