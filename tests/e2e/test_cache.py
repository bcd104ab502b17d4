"""The response cache end to end: the real SDK against ``tiergate serve`` and the mock
provider (a separate process), with PostgreSQL as the store.

Each test's prompt carries a mock control ``key=NAME`` so the mock's own record
(``/_mock/attempts/NAME``) says how many calls really reached the provider.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
from openai.types import Batch, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.processes import Gateway, base_env, create_key
from tests.e2e.conftest import row
from tests.support.batches import responses_line, start_batch
from tests.support.waiting import wait_until

PRICING = {"input_per_mtok": 3.0, "output_per_mtok": 15.0}


@pytest.fixture(scope="module")
def gateway_config(tmp_path_factory: pytest.TempPathFactory, mock_upstream: str) -> Path:
    upstream = f"{mock_upstream}/v1"
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [
            {
                "name": "cached",
                "upstream": upstream,
                "pricing": PRICING,
                "cache": {"exact": True, "ttl_s": 3600},
            },
            {
                "name": "sampling-ignored",
                "upstream": upstream,
                "cache": {"exact": True, "ignore": ["temperature", "max_output_tokens"]},
            },
            {"name": "short", "upstream": upstream, "cache": {"exact": True, "ttl_s": 1}},
            {"name": "uncached", "upstream": upstream},
            {"name": "embed", "upstream": upstream, "endpoints": ["embeddings"]},
            {
                "name": "semantic-down",
                "upstream": upstream,
                "cache": {
                    "exact": True,
                    "semantic": {"embedding_model": "embed-down", "timeout_s": 1},
                },
            },
            {
                "name": "embed-down",
                "upstream": "http://127.0.0.1:9/v1",
                "endpoints": ["embeddings"],
                "max_attempts": 1,
            },
        ],
        limits={"maintenance_every_s": 1},
    )


def tag(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def upstream_calls(mock: str, name: str) -> int:
    return len(httpx.get(f"{mock}/_mock/attempts/{name}").json()["attempts"])


def stored(db: psycopg.Connection, name: str) -> bool:
    """Whether the answer to the prompt ``mock:key=NAME`` is in the cache."""
    query = "SELECT 1 FROM cache_entries WHERE prompt = %s"
    return db.execute(query, (f"user: mock:key={name}",)).fetchone() is not None


def wait_stored_prompt(db: psycopg.Connection, name: str) -> None:
    """Wait for the answer to ``mock:key=NAME`` (written after the answer was sent)."""
    wait_until(lambda: stored(db, name), f"the answer to {name} to be stored")


def cache_of(raw: Any) -> str | None:
    return raw.headers.get("x-tiergate-cache")


def ask(client: openai.OpenAI, model: str, name: str, **extra: Any) -> tuple[Response, str | None]:
    raw = client.responses.with_raw_response.create(model=model, input=f"mock:key={name}", **extra)
    return Response.model_validate(raw.parse().model_dump()), cache_of(raw)


def cache_count(gateway: Gateway, model: str, result: str) -> float:
    """``tiergate_cache_total`` of the gateway's /metrics."""
    text = httpx.get(gateway.url + "/metrics").text
    wanted = f'tiergate_cache_total{{model="{model}",result="{result}"}} '
    return sum(float(line[len(wanted) :]) for line in text.splitlines() if line.startswith(wanted))


def test_a_repeated_request_is_a_hit_with_free_cached_usage(
    client: openai.OpenAI, mock_upstream: str, db: psycopg.Connection, gateway: Gateway
):
    hits_before = cache_count(gateway, "cached", "hit")
    name = tag("exact")
    first, said = ask(client, "cached", name)
    assert said == "miss"
    # The write happens after the answer: wait for the entry, as a second client would.
    wait_until(
        lambda: db.execute("SELECT count(*) FROM cache_entries WHERE model = 'cached'").fetchone()[
            0
        ],
        "the answer to be stored",
    )
    second, said = ask(client, "cached", name)
    assert said == "hit"
    assert upstream_calls(mock_upstream, name) == 1
    assert second.output_text == first.output_text
    assert second.id != first.id
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens == first.usage.input_tokens
    assert second.usage.input_tokens_details.cached_tokens == second.usage.input_tokens
    hit = row(db, second.id)
    assert hit["cache"] == "hit" and hit["status"] == "completed"
    assert hit["cost_usd"] == Decimal(0)
    assert hit["cached_tokens"] == hit["input_tokens"] == first.usage.input_tokens
    missed = row(db, first.id)
    assert missed["cache"] == "miss" and missed["cost_usd"] > 0
    # The hit is a real Response: readable by id like any other.
    fetched = client.responses.retrieve(second.id)
    assert fetched.output_text == first.output_text
    assert cache_count(gateway, "cached", "hit") == hits_before + 1


def wait_stored(db: psycopg.Connection, model: str, owner_name: str, count: int = 1) -> None:
    wait_until(
        lambda: (
            db.execute(
                "SELECT count(*) FROM cache_entries c JOIN api_keys k ON k.id = c.owner_key_id"
                " WHERE c.model = %s AND k.name = %s",
                (model, owner_name),
            ).fetchone()[0]
            >= count
        ),
        f"{count} answer(s) of {owner_name} on {model} to be stored",
    )


def test_a_cached_answer_is_replayed_as_a_stream(
    client: openai.OpenAI, mock_upstream: str, db: psycopg.Connection
):
    name = tag("stream")
    messages = [{"role": "user", "content": f"mock:key={name}"}]
    raw = client.chat.completions.with_raw_response.create(model="cached", messages=messages)
    first = ChatCompletion.model_validate(raw.parse().model_dump())
    assert cache_of(raw) == "miss"
    wait_stored(db, "cached", "alice", 2)
    with client.chat.completions.with_streaming_response.create(
        model="cached", messages=messages, stream=True, stream_options={"include_usage": True}
    ) as stream:
        assert stream.headers["x-tiergate-cache"] == "hit"
        chunks = [ChatCompletionChunk.model_validate(c.model_dump()) for c in stream.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first.choices[0].message.content
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens == first.usage.prompt_tokens
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens
    assert upstream_calls(mock_upstream, name) == 1
    # And a Responses stream of a cached answer: the SDK's stream helper reads it whole.
    rname = tag("rstream")
    ask(client, "cached", rname)
    wait_stored(db, "cached", "alice", 3)
    with client.responses.stream(model="cached", input=f"mock:key={rname}") as events:
        final = events.get_final_response()
    assert final.output_text == f"echo: mock:key={rname}"
    assert upstream_calls(mock_upstream, rname) == 1


def test_flex_and_background_calls_are_answered_from_the_cache_at_once(
    client: openai.OpenAI, mock_upstream: str, db: psycopg.Connection
):
    name = tag("tiers")
    first, _ = ask(client, "cached", name)
    wait_until(
        lambda: db.execute(
            "SELECT 1 FROM cache_entries WHERE response_body->>'id' = %s", (first.id,)
        ).fetchone(),
        "the answer to be stored",
    )
    flex, said = ask(client, "cached", name, service_tier="flex")
    assert said == "hit" and flex.status == "completed"
    assert flex.output_text == first.output_text
    assert row(db, flex.id)["service_tier"] == "flex"
    background, said = ask(client, "cached", name, background=True)
    assert said == "hit"
    assert background.status == "completed" and background.background is True
    assert client.responses.retrieve(background.id).output_text == first.output_text
    assert upstream_calls(mock_upstream, name) == 1


def test_a_flex_miss_is_stored_by_the_worker(
    client: openai.OpenAI, mock_upstream: str, db: psycopg.Connection
):
    name = tag("flexmiss")
    first, said = ask(client, "cached", name, service_tier="flex")
    assert said == "miss" and first.status == "completed"
    assert row(db, first.id)["cache"] == "miss"
    wait_stored_prompt(db, name)
    again, said = ask(client, "cached", name)
    assert said == "hit" and again.output_text == first.output_text
    assert upstream_calls(mock_upstream, name) == 1


def test_a_batch_of_repeated_lines_calls_the_upstream_once_per_prompt(
    client: openai.OpenAI, mock_upstream: str, db: psycopg.Connection
):
    names = [tag("line") for _ in range(3)]
    lines = [responses_line(f"r{i}", f"mock:key={names[i % 3]}", model="cached") for i in range(30)]
    batch = start_batch(client, lines)
    done = wait_until(
        lambda: (b := client.batches.retrieve(batch.id)).status == "completed" and b,
        "the batch to complete",
    )
    Batch.model_validate(done.model_dump())
    assert done.request_counts is not None and done.request_counts.completed == 30
    assert [upstream_calls(mock_upstream, n) for n in names] == [1, 1, 1]
    results: dict[str, int] = dict(
        db.execute(
            "SELECT cache, count(*) FROM requests WHERE batch_id = %s GROUP BY cache", (batch.id,)
        ).fetchall()
    )
    assert results == {"miss": 3, "hit": 27}
    output = client.files.content(done.output_file_id).text.splitlines()
    assert len(output) == 30


def test_sampling_fields_decide_unless_ignored(client: openai.OpenAI, mock_upstream: str):
    name = tag("sampling")
    _, said = ask(client, "cached", name, temperature=0.2)
    assert said == "miss"
    _, said = ask(client, "cached", name, temperature=0.9)
    assert said == "miss"  # another temperature is another request
    assert upstream_calls(mock_upstream, name) == 2
    other = tag("ignored")
    ask(client, "sampling-ignored", other, temperature=0.2)
    wait_until(
        lambda: ask(client, "sampling-ignored", other, temperature=0.9)[1] == "hit",
        "the answer to be stored (temperature ignored)",
    )


def test_the_client_may_bypass_the_cache(
    client: openai.OpenAI, mock_upstream: str, db: psycopg.Connection
):
    name = tag("bypass")
    ask(client, "cached", name)
    wait_stored_prompt(db, name)
    raw = client.responses.with_raw_response.create(
        model="cached",
        input=f"mock:key={name}",
        extra_headers={"x-tiergate-cache": "bypass"},
    )
    assert cache_of(raw) == "bypass"
    assert row(db, raw.parse().id)["cache"] == "bypass"
    assert upstream_calls(mock_upstream, name) == 2


def test_a_key_with_caching_off_never_uses_it(
    gateway: Gateway, database: DatabaseURL, mock_upstream: str, db: psycopg.Connection
):
    secret = create_key(database.libpq(), tag("nocache"), options=["--cache", "off"])
    client = openai.OpenAI(base_url=gateway.api, api_key=secret, max_retries=0)
    name = tag("off")
    for _ in range(2):
        _, said = ask(client, "cached", name)
        assert said == "bypass"
    assert upstream_calls(mock_upstream, name) == 2
    stored = db.execute(
        "SELECT count(*) FROM cache_entries WHERE prompt = %s", (f"user: mock:key={name}",)
    ).fetchone()
    assert stored == (0,)


def test_models_without_a_cache_say_nothing(client: openai.OpenAI):
    raw = client.responses.with_raw_response.create(model="uncached", input="hello")
    assert cache_of(raw) is None


def test_another_key_never_gets_a_cached_answer(
    gateway: Gateway,
    database: DatabaseURL,
    client: openai.OpenAI,
    mock_upstream: str,
    db: psycopg.Connection,
):
    name = tag("isolated")
    ask(client, "cached", name)
    wait_stored_prompt(db, name)
    key_name = tag("tenant")
    first_secret = create_key(database.libpq(), key_name)
    other = openai.OpenAI(base_url=gateway.api, api_key=first_secret, max_retries=0)
    _, said = ask(other, "cached", name)
    assert said == "miss"
    assert upstream_calls(mock_upstream, name) == 2
    # A key revoked, then created again under the same name, starts with nothing cached.
    wait_stored(db, "cached", key_name)
    _, said = ask(other, "cached", name)
    assert said == "hit"
    subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "revoke", key_name],
        env=base_env(DATABASE_URL=database.libpq()),
        check=True,
        capture_output=True,
    )
    again = openai.OpenAI(
        base_url=gateway.api, api_key=create_key(database.libpq(), key_name), max_retries=0
    )
    _, said = ask(again, "cached", name)
    assert said == "miss"
    assert upstream_calls(mock_upstream, name) == 3


def test_entries_expire_and_the_sweep_deletes_them(
    client: openai.OpenAI, mock_upstream: str, db: psycopg.Connection
):
    name = tag("ttl")
    prompt = f"user: mock:key={name}"
    ask(client, "short", name)
    wait_stored_prompt(db, name)
    # ttl_s is 1: once past it, the entry is never served, and the workers' sweep deletes it.
    wait_until(
        lambda: db.execute(
            "SELECT count(*) = 0 FROM cache_entries WHERE prompt = %s", (prompt,)
        ).fetchone()[0],
        "the sweep to delete the expired answer",
    )
    _, said = ask(client, "short", name)
    assert said == "miss"
    assert upstream_calls(mock_upstream, name) == 2


def test_errors_and_samples_are_not_stored(client: openai.OpenAI, mock_upstream: str):
    name = tag("error")
    for _ in range(2):
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model="cached", input=f"mock:key={name},status=400")
        assert caught.value.response.headers["x-tiergate-cache"] == "miss"
    assert upstream_calls(mock_upstream, name) == 2
    sampled = tag("sampled")
    messages = [{"role": "user", "content": f"mock:key={sampled}"}]
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="cached", messages=messages, n=2
        )
        assert cache_of(raw) == "miss"
    assert upstream_calls(mock_upstream, sampled) == 2


def test_embeddings_are_cached_exactly(client: openai.OpenAI, db: psycopg.Connection):
    text = tag("embedding")
    raw = client.embeddings.with_raw_response.create(model="cached", input=text)
    first = CreateEmbeddingResponse.model_validate(raw.parse().model_dump())
    assert cache_of(raw) == "miss"
    wait_until(
        lambda: (
            client.embeddings.with_raw_response.create(model="cached", input=text).headers[
                "x-tiergate-cache"
            ]
            == "hit"
        ),
        "the embedding to be cached",
    )
    again = client.embeddings.create(model="cached", input=text)
    assert again.data[0].embedding == first.data[0].embedding


def test_an_embeddings_model_that_is_down_is_a_miss_never_an_error(
    client: openai.OpenAI, gateway: Gateway
):
    name = tag("degraded")
    answer, said = ask(client, "semantic-down", name)
    assert said == "miss" and answer.status == "completed"
    log = gateway.process.log.read_text()
    assert "semantic cache skipped, no embedding" in log


def test_cache_clear_empties_it(
    client: openai.OpenAI, database: DatabaseURL, mock_upstream: str, db: psycopg.Connection
):
    name = tag("clear")
    ask(client, "cached", name)
    wait_stored_prompt(db, name)
    stats = subprocess.run(
        [sys.executable, "-m", "app.cli", "cache", "stats"],
        env=base_env(DATABASE_URL=database.libpq()),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert stats[0].split()[:5] == ["key", "model", "entries", "expired", "hits"]
    mine = [line.split() for line in stats[1:] if line.split()[:2] == ["alice", "cached"]]
    assert len(mine) == 1 and int(mine[0][2]) >= 1
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "cache", "clear", "--model", "cached", "--key", "alice"],
        env=base_env(DATABASE_URL=database.libpq()),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out.startswith("cleared ") and "of model cached of key alice" in out
    assert not stored(db, name)
    _, said = ask(client, "cached", name)
    assert said == "miss"
