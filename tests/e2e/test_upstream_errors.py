"""Upstream errors in OpenAI's shape, through the official SDK.

A provider's error answer that is not ``{"error": {...}}`` (llama-cpp-python's
``{"detail": ...}``, plain text, a proxy's HTML page; the mock's ``error_format`` control)
reaches the client as an OpenAI error with the provider's status and its text as the message,
on every path: realtime, blocking flex, background, Batch API error files. A provider that
cannot be reached (a closed loopback port, a name that does not resolve) is described without
its address: not to the client, not in the rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import psycopg
import pytest
from openai.types.responses import Response

from app.testing.config import write_config
from app.testing.processes import free_port
from tests.e2e.conftest import row
from tests.e2e.test_batches import results, wait_for
from tests.support.batches import chat_line, responses_line, start_batch
from tests.support.waiting import wait_until

CLOSED_PORT = free_port()  # nothing listens there
NOWHERE = f"http://127.0.0.1:{CLOSED_PORT}/v1"
UNRESOLVABLE_HOST = "tiergate-no-such-host.invalid"  # .invalid never resolves (RFC 2606)
ERROR_KEYS = {"message", "type", "param", "code"}
FORMATS = [
    # the mock's error_format, the status it answers, the message the client gets
    ("detail", 404, "mock status 404"),
    ("text", 503, "mock status 503"),
    ("html", 502, "502 Bad Gateway mock status 502"),
]


@pytest.fixture(scope="module")
def gateway_config(tmp_path_factory: pytest.TempPathFactory, mock_upstream: str) -> Path:
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [
            {"name": "plain", "upstream": f"{mock_upstream}/v1", "max_attempts": 1},
            {"name": "nowhere", "upstream": NOWHERE, "max_attempts": 2, "timeout_s": 5},
            {
                "name": "unresolvable",
                "upstream": f"http://{UNRESOLVABLE_HOST}/v1",
                "max_attempts": 1,
                "timeout_s": 5,
            },
        ],
        {
            "retry_base_s": 0.05,
            "retry_max_s": 0.2,
            "maintenance_every_s": 1,
            # Each test's failures are its own: the circuit breaker (docs/fleet.md) must not
            # hold the next test's calls back for a cool-down.
            "health": {"failures_to_trip": 1000},
        },
    )


def _background(client: openai.OpenAI, model: str, text: str) -> dict[str, Any]:
    """A background flex request's final Response object, as JSON, valid for the SDK."""
    created = client.responses.create(model=model, input=text, background=True, service_tier="flex")
    final = wait_until(
        lambda: (
            (r := json.loads(client.responses.with_raw_response.retrieve(created.id).text))[
                "status"
            ]
            not in ("queued", "in_progress")
            and r
        ),
        f"background {created.id} to end",
    )
    Response.model_validate(final)  # every field, error code included, as the SDK types it
    return final


def _no_address(text: str) -> None:
    assert "127.0.0.1" not in text and f":{CLOSED_PORT}" not in text
    assert "ConnectionKey" not in text and UNRESOLVABLE_HOST not in text


def _row_text(db: psycopg.Connection, request_id: str) -> str:
    found = db.execute("SELECT row_to_json(r)::text FROM requests r WHERE id = %s", (request_id,))
    (text,) = found.fetchone() or ("",)
    return text


@pytest.mark.parametrize("endpoint", ["responses", "chat"])
@pytest.mark.parametrize(
    ("error_format", "status", "message"), FORMATS, ids=[f[0] for f in FORMATS]
)
def test_realtime_errors_of_any_shape_reach_the_client_in_openai_shape(
    client: openai.OpenAI,
    db: psycopg.Connection,
    endpoint: str,
    error_format: str,
    status: int,
    message: str,
):
    text = f"mock:status={status},error_format={error_format} realtime"
    with pytest.raises(openai.APIStatusError) as failed:
        if endpoint == "responses":
            client.responses.create(model="plain", input=text)
        else:
            client.chat.completions.create(
                model="plain", messages=[{"role": "user", "content": text}]
            )
    exc = failed.value
    assert exc.status_code == status  # the provider's own status
    assert exc.response.headers["content-type"] == "application/json"
    assert isinstance(exc.body, dict) and set(exc.body) == ERROR_KEYS
    assert exc.body["message"] == message
    assert exc.body["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    tracked = row(db, exc.response.headers["x-request-id"])
    assert tracked["status"] == "failed" and tracked["response_status"] == status
    assert tracked["response_body"] == {"error": exc.body}
    assert tracked["error"] == {"code": f"upstream_{status}", "message": message}


def test_a_streamed_call_that_the_provider_refuses_is_an_openai_error_too(
    client: openai.OpenAI,
):
    with pytest.raises(openai.NotFoundError) as failed:
        client.responses.create(
            model="plain", input="mock:status=404,error_format=text streamed", stream=True
        )
    assert failed.value.body == {
        "message": "mock status 404",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_flex_and_background_errors_of_any_shape_are_openai_errors(
    client: openai.OpenAI, db: psycopg.Connection
):
    with pytest.raises(openai.NotFoundError) as failed:
        client.responses.create(
            model="plain", input="mock:status=404,error_format=detail blocking", service_tier="flex"
        )
    assert failed.value.body == {
        "message": "mock status 404",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    assert failed.value.response.headers["x-should-retry"] == "false"

    refused = _background(client, "plain", "mock:status=400,error_format=html background")
    assert refused["status"] == "failed"
    assert refused["error"] == {
        "code": "invalid_prompt",  # OpenAI's name for a request the model server refused
        "message": "upstream_400: 400 Bad Request mock status 400",
    }
    tracked = row(db, refused["id"])
    assert tracked["response_body"]["error"]["message"] == "400 Bad Request mock status 400"


def test_batch_error_files_hold_openai_error_bodies(client: openai.OpenAI):
    batch = start_batch(
        client,
        [
            chat_line("detail", "mock:status=404,error_format=detail x", model="plain"),
            chat_line("text", "mock:status=422,error_format=text x", model="plain"),
            chat_line("fine", "hello", model="plain"),
        ],
    )
    done = wait_for(client, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 2)
    errors = {line["custom_id"]: line for line in results(client, done.error_file_id)}
    for custom_id, status in (("detail", 404), ("text", 422)):
        response = errors[custom_id]["response"]
        assert response["status_code"] == status
        assert response["body"] == {
            "error": {
                "message": f"mock status {status}",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }


def test_a_providers_own_error_code_reaches_the_client_on_every_tier(
    client: openai.OpenAI, db: psycopg.Connection
):
    """A provider's 400 with its own code (``context_length_exceeded``) keeps that code and
    message: as they are on a realtime or blocking flex call, in the row and a batch's error
    file, and at the head of a background Response's message (whose ``code`` must be one of
    OpenAI's ResponseError codes: ``invalid_prompt``)."""
    control = "mock:status=400,error_code=context_length_exceeded"
    for tier in ("default", "flex"):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model="plain",
                messages=[{"role": "user", "content": f"{control} {tier}"}],
                service_tier=tier,  # type: ignore[arg-type]
            )
        assert isinstance(refused.value.body, dict)
        assert refused.value.body["code"] == "context_length_exceeded", tier
        assert refused.value.body["message"] == "mock status 400"

    background = _background(client, "plain", f"{control} background")
    assert background["error"] == {
        "code": "invalid_prompt",
        "message": "context_length_exceeded: mock status 400",
    }
    assert row(db, background["id"])["error"]["code"] == "context_length_exceeded"

    batch = start_batch(client, [chat_line("long", f"{control} line", model="plain")])
    done = wait_for(client, batch.id)
    assert done.request_counts is not None and done.request_counts.failed == 1
    (line,) = results(client, done.error_file_id)
    assert line["response"]["body"]["error"]["code"] == "context_length_exceeded"


def test_an_unreachable_upstream_is_never_named(client: openai.OpenAI, db: psycopg.Connection):
    refused = "cannot reach the upstream: connection refused"
    ids = []
    for stream in (False, True):  # realtime: one attempt, the client's to retry
        with pytest.raises(openai.InternalServerError) as failed:
            client.responses.create(model="nowhere", input="realtime", stream=stream)
        assert failed.value.status_code == 502 and failed.value.code == "upstream_unreachable"
        assert isinstance(failed.value.body, dict) and failed.value.body["message"] == refused
        ids.append(failed.value.response.headers["x-request-id"])

    with pytest.raises(openai.InternalServerError) as failed:  # blocking flex: retried, then 502
        client.responses.create(model="nowhere", input="flex", service_tier="flex")
    gave_up = f"{refused} (gave up after 2 attempts)"
    assert isinstance(failed.value.body, dict) and failed.value.body["message"] == gave_up
    ids.append(failed.value.response.headers["x-request-id"])

    background = _background(client, "nowhere", "background")
    assert background["error"] == {
        "code": "server_error",
        "message": f"upstream_unreachable: {gave_up}",
    }
    ids.append(background["id"])

    batch = start_batch(client, [responses_line("line", "batch", model="nowhere")])
    done = wait_for(client, batch.id)
    (line,) = results(client, done.error_file_id)
    assert line["response"] is None
    assert line["error"] == {"code": "upstream_unreachable", "message": gave_up}

    for request_id in ids:
        tracked = _row_text(db, request_id)
        assert "connection refused" in tracked
        _no_address(tracked)
    lines = db.execute(
        "SELECT string_agg(row_to_json(r)::text, '') FROM requests r WHERE batch_id = %s",
        (batch.id,),
    ).fetchone()
    assert lines is not None and "connection refused" in lines[0]
    _no_address(lines[0])


def test_a_name_that_does_not_resolve_is_never_named(client: openai.OpenAI, db: psycopg.Connection):
    with pytest.raises(openai.InternalServerError) as failed:
        client.responses.create(model="unresolvable", input="realtime")
    exc = failed.value
    assert exc.status_code == 502 and isinstance(exc.body, dict)
    # Name resolution fails at once where a resolver answers; where none does, the call's
    # timeout ends it. Either way the message says what happened and not where.
    assert exc.body["message"].startswith(
        ("cannot reach the upstream: name resolution failed", "upstream timed out")
    )
    _no_address(exc.body["message"])
    _no_address(_row_text(db, exc.response.headers["x-request-id"]))
