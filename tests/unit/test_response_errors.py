"""Errors on Response objects: OpenAI's ResponseError codes (the SDK's type allows no other),
tiergate's own code kept in the message; none on a cancelled Response. Rows keep tiergate's
codes (admins group failures by them), so rows stored before this mapping read the same way."""

from __future__ import annotations

import datetime as dt

import pytest
from openai.types.responses import ResponseError

from app.openai.objects import response_error
from app.store.requests import RequestRow
from app.vocabulary import ErrorCode, response_error_code

RESPONSE_CODES = [
    # stored code, upstream status, OpenAI's code
    ("upstream_503", 503, "server_error"),
    ("upstream_429", 429, "rate_limit_exceeded"),
    ("upstream_400", 400, "invalid_prompt"),
    ("upstream_404", 404, "server_error"),
    ("upstream_timeout", None, "server_error"),
    ("upstream_unreachable", None, "server_error"),
    ("request_expired", None, "rate_limit_exceeded"),
    ("gateway_interrupted", None, "server_error"),
    ("processing_failed", None, "server_error"),
    ("rate_limit_exceeded", 429, "rate_limit_exceeded"),  # a realtime upstream's own code
    ("context_length_exceeded", 400, "invalid_prompt"),  # ... not one of OpenAI's: by status
    (None, 502, "server_error"),
]


@pytest.mark.parametrize(("stored", "status", "expected"), RESPONSE_CODES)
def test_response_error_codes_are_openais(stored: str | None, status: int | None, expected: str):
    assert response_error_code(stored, status) == expected


def _row(status: str, code: str, message: str, response_status: int | None = None) -> RequestRow:
    return RequestRow(
        id="resp_1",
        owner_key_id="key_1",
        endpoint="/v1/responses",
        model="m",
        service_tier="flex",
        status=status,
        body={},
        created_at=dt.datetime.now(dt.UTC),
        error={"code": code, "message": message},
        response_status=response_status,
    )


def test_response_error_keeps_tiergates_detail_in_the_message():
    failed = response_error(_row("failed", "upstream_503", "mock status 503", 503))
    assert failed == {"code": "server_error", "message": "upstream_503: mock status 503"}
    ResponseError.model_validate(failed)
    expired = response_error(_row("expired", ErrorCode.REQUEST_EXPIRED, "too late"))
    assert expired == {"code": "rate_limit_exceeded", "message": "request_expired: too late"}
    own = response_error(_row("failed", "rate_limit_exceeded", "slow down", 429))
    assert own == {"code": "rate_limit_exceeded", "message": "slow down"}
    assert response_error(_row("cancelled", "cancelled", "Cancelled by the client.")) is None
