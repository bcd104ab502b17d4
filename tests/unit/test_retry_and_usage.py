"""Backoff honours Retry-After; usage is read from bodies and streams."""

from __future__ import annotations

import httpx

from app.calls.policy import backoff_s, rule_for
from app.openai.usage import usage_of
from app.token_usage import NO_USAGE, TokenUsage
from app.upstream.client import error_from_status, retry_after


def test_backoff_grows_and_is_capped():
    assert 0.8 <= backoff_s(1, None, 1.0, 60.0) <= 1.2
    assert 3.2 <= backoff_s(3, None, 1.0, 60.0) <= 4.8
    assert backoff_s(30, None, 1.0, 60.0) <= 72.0


def test_backoff_never_shorter_than_retry_after():
    assert backoff_s(1, 7.0, 1.0, 60.0) >= 7.0


def test_retry_after_headers():
    assert retry_after(httpx.Headers({"retry-after": "3"})) == 3.0
    assert retry_after(httpx.Headers({"retry-after-ms": "250"})) == 0.25
    assert retry_after(httpx.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) is None


def test_status_classification():
    assert rule_for(error_from_status(429, httpx.Headers(), b"{}")).retryable
    assert rule_for(error_from_status(503, httpx.Headers(), b"not json")).retryable
    final = error_from_status(400, httpx.Headers(), b'{"error": {"message": "bad"}}')
    assert not rule_for(final).retryable and final.message == "bad" and final.code == "upstream_400"


def test_usage_of_each_shape():
    responses = {
        "input_tokens": 20,
        "output_tokens": 30,
        "total_tokens": 50,
        "input_tokens_details": {"cached_tokens": 8},
        "output_tokens_details": {"reasoning_tokens": 12},
    }
    assert usage_of({"usage": responses}) == TokenUsage(20, 30, 50, cached=8, reasoning=12)
    chat = {
        "prompt_tokens": 4,
        "completion_tokens": 1,
        "prompt_tokens_details": {"cached_tokens": 2},
        "completion_tokens_details": {"reasoning_tokens": 1},
    }
    assert usage_of({"usage": chat}) == TokenUsage(4, 1, 5, cached=2, reasoning=1)
    assert usage_of({"usage": {"prompt_tokens": 4, "total_tokens": 4}}) == TokenUsage(4, None, 4)
    assert usage_of({"no": "usage"}) == NO_USAGE and not NO_USAGE.known
    assert usage_of({"usage": None}) == NO_USAGE
