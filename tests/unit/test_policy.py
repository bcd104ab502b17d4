"""The call core's retry policy: one table for realtime failover, deferred retries and health."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from app.calls.policy import (
    EXPIRED,
    FINAL,
    Health,
    Window,
    after_failure,
    fault_name,
    rule_for,
    rule_for_status,
)
from app.upstream.client import UpstreamError, error_from_status
from app.vocabulary import ErrorCode, Status


@pytest.mark.parametrize(
    ("status", "retryable", "elsewhere", "health"),
    [
        (400, False, False, Health.NOTHING),
        (404, False, False, Health.NOTHING),
        (408, True, False, Health.FAULT),
        (409, True, False, Health.FAULT),
        (429, True, True, Health.REST),
        (500, True, True, Health.FAULT),
        (501, False, True, Health.FAULT),
        (503, True, True, Health.FAULT),
    ],
)
def test_status_rules(status: int, retryable: bool, elsewhere: bool, health: Health) -> None:
    rule = rule_for_status(status)
    assert (rule.retryable, rule.elsewhere, rule.health) == (retryable, elsewhere, health)
    assert rule_for(error_from_status(status, httpx.Headers(), b"{}")) == rule


def test_transport_failures_fail_over_only_when_the_provider_did_nothing() -> None:
    unreachable = rule_for(UpstreamError(ErrorCode.UPSTREAM_UNREACHABLE, "down"))
    broken = rule_for(UpstreamError(ErrorCode.UPSTREAM_CONNECTION_BROKEN, "cut"))
    assert unreachable.retryable and unreachable.elsewhere
    assert broken.retryable and not broken.elsewhere  # it may have been done (and billed)
    assert rule_for(UpstreamError("some_upstream_code", "said so")) == FINAL
    # The provider declared the call failed: final, whatever its code would say.
    declared = UpstreamError(ErrorCode.UPSTREAM_STREAM_BROKEN, "failed", final=True)
    assert rule_for(declared) == FINAL


def test_fault_names() -> None:
    assert fault_name(error_from_status(503, httpx.Headers(), b"")) == "HTTP 503"
    assert fault_name(UpstreamError(ErrorCode.UPSTREAM_TIMEOUT, "slow")) == "upstream_timeout"


def window(seconds: float, max_attempts: int = 3) -> Window:
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    return Window(expires_at=expires, max_attempts=max_attempts, base_s=1.0, max_s=10.0)


def test_after_failure_retries_inside_the_window() -> None:
    failure = after_failure(error_from_status(503, httpx.Headers(), b""), 1, window(3600))
    assert failure.outcome is None and failure.retry_in_s is not None
    assert failure.error == {"code": "upstream_503", "message": failure.error["message"]}


def test_after_failure_gives_up_after_max_attempts() -> None:
    failure = after_failure(error_from_status(503, httpx.Headers(), b""), 3, window(3600))
    assert failure.outcome is not None and failure.outcome.status == Status.FAILED
    assert failure.outcome.error is not None
    assert "gave up after 3 attempts" in failure.outcome.error["message"]


def test_after_failure_expires_when_the_retry_would_start_too_late() -> None:
    headers = httpx.Headers({"retry-after": "120"})
    failure = after_failure(error_from_status(429, headers, b""), 1, window(60))
    assert failure.outcome is not None and failure.outcome.status == Status.EXPIRED
    assert failure.outcome.error is not None and EXPIRED.error is not None
    assert failure.outcome.error["code"] == EXPIRED.error["code"]
    assert "(Retry-After)" in failure.outcome.error["message"]


def test_a_client_error_is_final_at_once() -> None:
    failure = after_failure(error_from_status(400, httpx.Headers(), b"{}"), 1, window(3600))
    assert failure.outcome is not None and failure.outcome.status == Status.FAILED
    assert failure.outcome.response_status == 400
