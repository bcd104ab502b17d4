"""Usage and cost end to end: every tier stores its tokens and cost, a Batch carries its
usage, /metrics counts, ``tiergate usage`` prints, the organization endpoints answer admins.

The mock provider reports usage (``cached=N``/``reasoning=N`` controls set the details) or,
with ``usage=0``, none: tiergate then estimates it. Expected costs are computed here from the
tokens each answer reports and the configured prices, with exact fractions.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
from openai.types import Batch
from openai.types.responses import Response

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.processes import Gateway, base_env, create_key
from tests.e2e.conftest import row
from tests.support.batches import responses_line, start_batch
from tests.support.waiting import wait_until

PRICES = {"input": Fraction(3), "cached": Fraction(3, 10), "output": Fraction(15)}
TIER_PRICE = {"default": Fraction(1), "flex": Fraction(1, 2), "batch": Fraction(1, 4)}
DETAILS = "mock:cached=2,reasoning=1"


@pytest.fixture(scope="module")
def gateway_config(tmp_path_factory: pytest.TempPathFactory, mock_upstream: str) -> Path:
    upstream = f"{mock_upstream}/v1"
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [
            {
                "name": "priced",
                "upstream": upstream,
                "pricing": {
                    "input_per_mtok": 3.0,
                    "output_per_mtok": 15.0,
                    "cached_input_per_mtok": 0.3,
                },
            },
            {"name": "unpriced", "upstream": upstream},
        ],
        limits={"tier_price": {"flex": 0.5, "batch": 0.25}},
    )


@pytest.fixture(scope="module")
def admin_key(database: DatabaseURL) -> str:
    return create_key(database.libpq(), "root", admin=True)


def expected_cost(r: dict[str, Any], tier: str) -> Decimal:
    cached = r["cached_tokens"] or 0
    exact = (
        (r["input_tokens"] - cached) * PRICES["input"]
        + cached * PRICES["cached"]
        + (r["output_tokens"] or 0) * PRICES["output"]
    ) / 1_000_000
    exact *= TIER_PRICE[tier]
    return Decimal(exact.numerator) / Decimal(exact.denominator)


def check_row(r: dict[str, Any], tier: str, usage: Any) -> None:
    """The row stores what the answer reported, and the cost of it at ``tier``."""
    assert r["input_tokens"] == usage.input_tokens and r["output_tokens"] == usage.output_tokens
    assert r["total_tokens"] == usage.total_tokens
    assert r["cached_tokens"] == usage.input_tokens_details.cached_tokens == 2
    assert r["reasoning_tokens"] == usage.output_tokens_details.reasoning_tokens == 1
    assert r["usage_estimated"] is False
    assert r["cost_usd"] == expected_cost(r, tier) and r["cost_usd"] > 0


def test_realtime_rows_have_tokens_and_cost(client: openai.OpenAI, db: psycopg.Connection):
    answer = client.responses.create(model="priced", input=f"{DETAILS} one two three four")
    check_row(row(db, answer.id), "default", answer.usage)
    chat = client.chat.completions.create(
        model="priced", messages=[{"role": "user", "content": f"{DETAILS} five six"}]
    )
    r = row(db, chat.id)
    assert chat.usage is not None and chat.usage.prompt_tokens_details is not None
    assert r["cached_tokens"] == chat.usage.prompt_tokens_details.cached_tokens == 2
    assert r["input_tokens"] == chat.usage.prompt_tokens
    assert r["cost_usd"] == expected_cost(r, "default")


def test_a_realtime_stream_stores_its_final_usage(client: openai.OpenAI, db: psycopg.Connection):
    with client.responses.stream(model="priced", input=f"{DETAILS} streamed words") as stream:
        final = stream.get_final_response()
    rid = wait_until(
        lambda: db.execute(
            "SELECT id FROM requests WHERE stream AND model = 'priced' AND status = 'completed'"
        ).fetchone(),
        "the stream's row",
    )[0]
    check_row(row(db, rid), "default", final.usage)


def finished_chat_stream(db: psycopg.Connection, marker: str) -> dict[str, Any]:
    found = wait_until(
        lambda: db.execute(
            "SELECT id FROM requests WHERE stream AND endpoint = '/v1/chat/completions'"
            " AND status = 'completed' AND body::text LIKE %s",
            (f"%{marker}%",),
        ).fetchone(),
        "the chat stream's row",
    )
    return row(db, found[0])


def test_a_chat_stream_stores_its_usage_chunk(client: openai.OpenAI, db: psycopg.Connection):
    chunks = list(
        client.chat.completions.create(
            model="priced",
            messages=[{"role": "user", "content": f"{DETAILS} chunked answer"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    r = finished_chat_stream(db, "chunked answer")
    assert (r["input_tokens"], r["output_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert r["cached_tokens"] == usage.prompt_tokens_details.cached_tokens == 2
    assert r["usage_estimated"] is False and r["cost_usd"] == expected_cost(r, "default")


def test_a_stream_without_usage_is_estimated(client: openai.OpenAI, db: psycopg.Connection):
    text = "mock:usage=0 no usage reported in this stream"
    chunks = list(
        client.chat.completions.create(
            model="priced",
            messages=[{"role": "user", "content": text}],
            stream=True,
            stream_options={"include_usage": True},  # ignored, as llama.cpp's server does
        )
    )
    assert all(chunk.usage is None for chunk in chunks)
    r = finished_chat_stream(db, "no usage reported")
    assert r["usage_estimated"] is True
    assert r["input_tokens"] == math.ceil(len(text) / 4)
    assert r["cost_usd"] == expected_cost(r, "default")


def test_embeddings_cost_their_input(client: openai.OpenAI, db: psycopg.Connection):
    vectors = client.embeddings.create(model="priced", input=["a b c", "d e"])
    r = wait_until(
        lambda: db.execute(
            "SELECT id FROM requests WHERE endpoint = '/v1/embeddings' AND model = 'priced'"
        ).fetchone(),
        "the embeddings row",
    )
    stored = row(db, r[0])
    assert stored["input_tokens"] == vectors.usage.prompt_tokens == 5
    assert stored["cost_usd"] == expected_cost(stored, "default")


def test_flex_and_background_are_priced_at_their_tier(
    client: openai.OpenAI, db: psycopg.Connection
):
    flex = client.responses.create(model="priced", input=f"{DETAILS} cheap", service_tier="flex")
    check_row(row(db, flex.id), "flex", flex.usage)
    job = client.responses.create(model="priced", input=f"{DETAILS} later", background=True)
    done = wait_until(
        lambda: (r := client.responses.retrieve(job.id)).status == "completed" and r,
        "the background response",
    )
    Response.model_validate(done.model_dump())
    assert done.usage is not None and done.usage.input_tokens_details.cached_tokens == 2
    check_row(row(db, job.id), "default", done.usage)


def test_a_batch_carries_the_sum_of_its_lines(client: openai.OpenAI, db: psycopg.Connection):
    lines = [responses_line(f"l{i}", f"{DETAILS} {'word ' * i}", "priced") for i in range(1, 6)]
    batch = start_batch(client, lines)
    batch = wait_until(
        lambda: (b := client.batches.retrieve(batch.id)).status == "completed" and b,
        "the batch",
    )
    Batch.model_validate(batch.model_dump())
    rows = [row(db, r[0]) for r in db.execute(
        "SELECT id FROM requests WHERE batch_id = %s", (batch.id,)
    ).fetchall()]  # fmt: skip
    assert len(rows) == 5
    for r in rows:
        assert r["cost_usd"] == expected_cost(r, "batch") and r["reasoning_tokens"] == 1
    usage = batch.usage
    assert usage is not None
    assert usage.input_tokens == sum(r["input_tokens"] for r in rows)
    assert usage.output_tokens == sum(r["output_tokens"] for r in rows)
    assert usage.total_tokens == sum(r["total_tokens"] for r in rows)
    assert usage.input_tokens_details.cached_tokens == 2 * 5
    assert usage.output_tokens_details.reasoning_tokens == 5
    stored = db.execute(
        "SELECT cost_usd, input_tokens FROM tiergate_batch_progress WHERE batch_id = %s",
        (batch.id,),
    ).fetchone()
    assert stored == (sum(r["cost_usd"] for r in rows), usage.input_tokens)


def test_missing_usage_is_estimated(client: openai.OpenAI, db: psycopg.Connection):
    text = "mock:usage=0 " + "x" * 37
    answer = client.responses.create(model="priced", input=text)
    assert answer.usage is None  # the upstream reported none
    r = row(db, answer.id)
    reply = answer.output_text
    assert r["usage_estimated"] is True
    assert r["input_tokens"] == math.ceil(len(text) / 4)
    assert r["output_tokens"] == math.ceil(len(reply) / 4)
    assert r["cost_usd"] == expected_cost(r, "default")
    flex = client.chat.completions.create(
        model="priced",
        messages=[{"role": "user", "content": "mock:usage=0 flex words"}],
        service_tier="flex",
    )
    assert flex.usage is None
    stored = row(db, flex.id)
    assert stored["usage_estimated"] is True and stored["input_tokens"] > 0
    assert stored["cost_usd"] == expected_cost(stored, "flex")


def test_an_unpriced_model_has_no_cost(client: openai.OpenAI, db: psycopg.Connection):
    answer = client.responses.create(model="unpriced", input="free lunch")
    r = row(db, answer.id)
    assert r["total_tokens"] > 0 and r["cost_usd"] is None


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_tokens_and_cost(
    gateway: Gateway, client: openai.OpenAI, db: psycopg.Connection
):
    client.responses.create(model="priced", input=f"{DETAILS} counted", service_tier="flex")
    text = httpx.get(gateway.url + "/metrics").text
    for tier in ("default", "flex", "batch"):
        sums = db.execute(
            "SELECT sum(input_tokens), sum(cached_tokens), sum(output_tokens), sum(cost_usd)"
            " FROM requests WHERE model = 'priced' AND status = 'completed' AND"
            " (CASE WHEN batch_id IS NULL THEN service_tier ELSE 'batch' END) = %s",
            (tier,),
        ).fetchone()
        assert sums is not None and sums[0]
        labels = {"model": "priced", "tier": tier, "key": "alice"}
        assert metric(text, "tiergate_tokens_total", kind="input", **labels) == sums[0]
        assert metric(text, "tiergate_tokens_total", kind="cached", **labels) == sums[1]
        assert metric(text, "tiergate_tokens_total", kind="output", **labels) == sums[2]
        assert metric(text, "tiergate_cost_usd_total", **labels) == pytest.approx(float(sums[3]))
    assert metric(text, "tiergate_usage_estimated_requests_total", model="priced") >= 2


def test_usage_cli_prints_the_sums(database: DatabaseURL, db: psycopg.Connection):
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "usage", "--key", "alice", "--by", "tier"],
        env=base_env(DATABASE_URL=database.libpq()),
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert lines["TIER"][1:] == [
        "REQUESTS",
        "INPUT",
        "CACHED",
        "OUTPUT",
        "REASONING",
        "COST",
        "USD",
    ]
    for tier in ("default", "flex", "batch"):
        n, given, cost = db.execute(
            "SELECT count(*), sum(input_tokens), sum(cost_usd) FROM requests"
            " WHERE status = 'completed' AND"
            " (CASE WHEN batch_id IS NULL THEN service_tier ELSE 'batch' END) = %s",
            (tier,),
        ).fetchone()
        assert lines[tier][1] == f"{n:,}" and lines[tier][2] == f"{given:,}"
        assert lines[tier][6].startswith(str(cost.quantize(Decimal("0.0001"))))
    assert "usage estimated" in out
    in_view = db.execute(
        "SELECT sum(cost_usd), sum(cached_tokens), sum(estimated_requests)"
        " FROM tiergate_usage_by_key WHERE key_name = 'alice'"
    ).fetchone()
    in_table = db.execute(
        "SELECT sum(cost_usd), sum(cached_tokens), count(*) FILTER (WHERE usage_estimated)"
        " FROM requests"
    ).fetchone()
    assert in_view == in_table and in_view[2] >= 2


def test_organization_endpoints_are_for_admin_keys(
    gateway: Gateway, key: str, admin_key: str, db: psycopg.Connection
):
    start = int(time.time()) - 3 * 86400
    params = {"start_time": start, "group_by": "model"}
    refused = httpx.get(
        gateway.api + "/organization/costs",
        params=params,
        headers={"Authorization": f"Bearer {key}"},
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_permissions"
    admin = openai.OpenAI(base_url=gateway.api, api_key=admin_key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=gateway.api, api_key=key, max_retries=0).get(
            "/organization/usage/completions", cast_to=object, options={"params": params}
        )
    page: Any = admin.get(
        "/organization/usage/completions",
        cast_to=object,
        options={"params": {**params, "group_by": ["model", "api_key_id"]}},
    )
    assert page["object"] == "page" and len(page["data"]) == 4 and not page["has_more"]
    results = [r for bucket in page["data"] for r in bucket["results"]]
    assert {r["object"] for r in results} == {"organization.usage.completions.result"}
    priced = [r for r in results if r["model"] == "priced"]
    n, given, cached = db.execute(
        "SELECT count(*), sum(input_tokens), sum(cached_tokens) FROM requests"
        " WHERE model = 'priced' AND status = 'completed' AND endpoint <> '/v1/embeddings'"
    ).fetchone()
    assert sum(r["num_model_requests"] for r in priced) == n
    assert sum(r["input_tokens"] for r in priced) == given
    assert sum(r["input_cached_tokens"] for r in priced) == cached
    embeddings: Any = admin.get(
        "/organization/usage/embeddings", cast_to=object, options={"params": params}
    )
    assert sum(r["input_tokens"] for b in embeddings["data"] for r in b["results"]) == 5
    costs: Any = admin.get("/organization/costs", cast_to=object, options={"params": params})
    total = db.execute("SELECT sum(cost_usd) FROM requests WHERE status = 'completed'").fetchone()[
        0
    ]
    amounts = [r["amount"] for b in costs["data"] for r in b["results"]]
    assert {a["currency"] for a in amounts} == {"usd"}
    assert sum(a["value"] for a in amounts) == pytest.approx(float(total))
    items: Any = admin.get(
        "/organization/costs",
        cast_to=object,
        options={"params": {**params, "group_by": "line_item"}},
    )
    line_items = {r["line_item"] for b in items["data"] for r in b["results"]}
    assert line_items == {"priced, default", "priced, flex", "priced, batch"}
    # One bucket per page: the cursor walks the same four days.
    walked, cursor = 0, None
    while True:
        query = {**params, "limit": 1, **({"page": cursor} if cursor else {})}
        one: Any = admin.get("/organization/costs", cast_to=object, options={"params": query})
        walked += len(one["data"])
        cursor = one["next_page"]
        if not one["has_more"]:
            break
    assert walked == 4


@pytest.mark.parametrize(
    ("path", "query", "param"),
    [
        ("/organization/costs", {}, "start_time"),
        ("/organization/costs", {"start_time": "yesterday"}, "start_time"),
        ("/organization/costs", {"start_time": 10, "bucket_width": "1h"}, "bucket_width"),
        ("/organization/usage/completions", {"start_time": 10, "group_by": "user"}, "group_by"),
        ("/organization/usage/completions", {"start_time": 10, "limit": 0}, "limit"),
        ("/organization/usage/embeddings", {"start_time": 10, "end_time": 5}, "end_time"),
        ("/organization/costs", {"start_time": 10, "page": "elsewhere"}, "page"),
    ],
)
def test_bad_organization_queries_are_400(
    gateway: Gateway, admin_key: str, path: str, query: dict[str, Any], param: str
):
    answer = httpx.get(
        gateway.api + path, params=query, headers={"Authorization": f"Bearer {admin_key}"}
    )
    assert answer.status_code == 400 and answer.json()["error"]["param"] == param
