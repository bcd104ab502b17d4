"""The ``flex`` executor: deferred calls go to the provider's own flex tier.

A deployment with ``executor: flex`` receives flex, background and batch rows with
``service_tier: "flex"``; the provider's "429 resource unavailable" is retried later without
using up an attempt; the row records the path it ran on and is priced at the provider's flex
multiplier. Realtime calls to the same deployment are untouched.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import httpx
import openai
import psycopg
import pytest
from openai.types.responses import Response

from app.testing.config import write_config
from tests.e2e.conftest import row

PRICING = {"input_per_mtok": 1.0, "output_per_mtok": 2.0, "flex": 0.5}


@pytest.fixture(scope="module")
def gateway_config(tmp_path_factory: pytest.TempPathFactory, mock_upstream: str) -> Path:
    upstream = f"{mock_upstream}/v1"
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [
            {
                "name": "paid",
                "deployments": [{"name": "openai", "upstream": upstream, "executor": "flex"}],
                "max_attempts": 1,
                "pricing": PRICING,
            },
            {
                # one flex call may take longer than a flex request's window: direct
                "name": "patient",
                "deployments": [
                    {
                        "name": "openai",
                        "upstream": upstream,
                        "executor": "flex",
                        "flex": {"timeout_s": 7200},
                    }
                ],
            },
        ],
        {
            "health": {"failures_to_trip": 1},
            "retry_base_s": 0.05,
            "retry_max_s": 0.2,
            "tier_price": {"flex": 0.8},
        },
    )


def attempts(mock_upstream: str, key: str) -> list[dict]:
    """What the provider received for calls carrying ``key=KEY``."""
    found: list[dict] = httpx.get(f"{mock_upstream}/_mock/attempts/{key}").json()["attempts"]
    return found


def test_flex_calls_go_to_the_providers_flex_tier_and_wait_out_its_429s(
    client: openai.OpenAI, db: psycopg.Connection, mock_upstream: str
):
    text = "mock:status=429,error_code=resource_unavailable,fail_times=3,key=flex-busy hi"
    raw = client.responses.with_raw_response.create(model="paid", input=text, service_tier="flex")
    response = Response.model_validate(raw.parse().model_dump())
    assert response.status == "completed" and response.output_text.startswith("echo: ")
    seen = attempts(mock_upstream, "flex-busy")
    # three 429s then the answer, all sent to the flex tier, with max_attempts: 1
    assert [a["status"] for a in seen] == [429, 429, 429, 200]
    assert all(a["body"]["service_tier"] == "flex" for a in seen)
    tracked = row(db, raw.headers["x-request-id"])
    assert tracked["executor"] == "flex" and tracked["attempts"] == 1
    assert tracked["deployment"] == "openai" and tracked["attempt_errors"] is None
    # priced at the provider's flex multiplier (0.5), not the tier's (0.8)
    expected = (
        (Decimal(tracked["input_tokens"]) * Decimal(1) + Decimal(tracked["output_tokens"]) * 2)
        / Decimal(1_000_000)
        * Decimal("0.5")
    )
    assert tracked["cost_usd"] == expected


def test_a_flex_429_does_not_take_the_deployment_out_for_realtime_calls(
    client: openai.OpenAI, db: psycopg.Connection, mock_upstream: str
):
    busy = "mock:status=429,error_code=resource_unavailable,fail_times=2,key=flex-rt hi"
    assert client.responses.create(model="paid", input=busy, service_tier="flex").status == (
        "completed"
    )
    # failures_to_trip: 1 — a fault or a rest would have taken it out of rotation
    raw = client.responses.with_raw_response.create(model="paid", input="realtime now")
    assert raw.parse().output_text == "echo: realtime now"
    assert raw.headers["x-tiergate-deployment"] == "openai"
    tracked = row(db, raw.headers["x-request-id"])
    assert tracked["executor"] is None  # realtime calls have no deferred path
    realtime_seen = attempts(mock_upstream, "flex-rt")
    assert len(realtime_seen) == 3


def test_realtime_calls_are_not_sent_to_the_flex_tier(client: openai.OpenAI, mock_upstream: str):
    client.responses.create(model="paid", input="mock:key=flex-realtime plain")
    (seen,) = attempts(mock_upstream, "flex-realtime")
    assert "service_tier" not in seen["body"]


def test_an_insufficient_quota_429_is_final_on_flex(
    client: openai.OpenAI, db: psycopg.Connection, mock_upstream: str
):
    text = "mock:status=429,error_code=insufficient_quota,key=flex-broke hi"
    raw = client.responses.with_raw_response.create(
        model="paid", input=text, service_tier="flex", background=True
    )
    rid = raw.parse().id
    done = client.responses.retrieve(rid)
    for _ in range(200):
        if done.status not in ("queued", "in_progress"):
            break
        done = client.responses.retrieve(rid)
    assert done.status == "failed"
    assert len(attempts(mock_upstream, "flex-broke")) == 1  # max_attempts: 1, counted
    assert row(db, rid)["error"]["code"] == "insufficient_quota"


def test_a_window_too_short_for_a_flex_call_runs_direct(
    client: openai.OpenAI, db: psycopg.Connection, mock_upstream: str
):
    raw = client.responses.with_raw_response.create(
        model="patient", input="mock:key=flex-patient hi", service_tier="flex"
    )
    assert raw.parse().status == "completed"
    (seen,) = attempts(mock_upstream, "flex-patient")
    assert "service_tier" not in seen["body"]
    assert row(db, raw.headers["x-request-id"])["executor"] == "direct"
