"""The retry policy, one table: what a failed upstream call means for the call, the client and
the deployment.

The upstream layer reports facts (an HTTP status, or the code of a transport failure); this
module judges them, for every caller alike:

- ``retryable``: deferred work (flex, background, batch lines) tries again later, after a
  backoff that honours ``Retry-After``;
- ``elsewhere``: a realtime call tries another deployment at once, because nothing reached
  the client yet and the provider did not do the work (no connection, a timeout, a 429, a 5xx);
- ``health``: what the deployment's circuit breaker learns (a 429 rests it, a fault counts
  against it, a client error says nothing against it).
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from enum import Enum
from typing import Any

from app.store.outcomes import Outcome
from app.upstream.client import UpstreamError
from app.vocabulary import ErrorCode, Status, error


class Health(Enum):
    """What a failure tells the deployment's health."""

    NOTHING = "nothing"  # the caller's fault (a 4xx): no word against the deployment
    REST = "rest"  # 429: rest it for Retry-After
    FAULT = "fault"  # counts towards tripping its circuit breaker


@dataclass(frozen=True)
class Rule:
    retryable: bool
    elsewhere: bool
    health: Health


FINAL = Rule(retryable=False, elsewhere=False, health=Health.NOTHING)

# Failures with an HTTP status: the provider answered.
BY_STATUS: dict[int, Rule] = {
    408: Rule(retryable=True, elsewhere=False, health=Health.FAULT),
    409: Rule(retryable=True, elsewhere=False, health=Health.FAULT),
    429: Rule(retryable=True, elsewhere=True, health=Health.REST),
    500: Rule(retryable=True, elsewhere=True, health=Health.FAULT),
    502: Rule(retryable=True, elsewhere=True, health=Health.FAULT),
    503: Rule(retryable=True, elsewhere=True, health=Health.FAULT),
    504: Rule(retryable=True, elsewhere=True, health=Health.FAULT),
}
# Any other 5xx (501, 505, ...): another deployment may do better; the same one will not.
OTHER_5XX = Rule(retryable=False, elsewhere=True, health=Health.FAULT)

# Failures without a status: the transport, or an answer that was no answer.
BY_CODE: dict[str, Rule] = {
    # The request never reached the provider, or no whole answer came in time.
    ErrorCode.UPSTREAM_UNREACHABLE: Rule(retryable=True, elsewhere=True, health=Health.FAULT),
    ErrorCode.UPSTREAM_TIMEOUT: Rule(retryable=True, elsewhere=True, health=Health.FAULT),
    # It may have reached the provider (and been billed): not sent again while a client waits.
    ErrorCode.UPSTREAM_CONNECTION_BROKEN: Rule(
        retryable=True, elsewhere=False, health=Health.FAULT
    ),
    ErrorCode.UPSTREAM_BAD_RESPONSE: Rule(retryable=True, elsewhere=False, health=Health.FAULT),
    ErrorCode.UPSTREAM_STREAM_BROKEN: Rule(retryable=True, elsewhere=False, health=Health.FAULT),
}


def rule_for_status(status: int) -> Rule:
    """The rule for an error answer with HTTP ``status``."""
    rule = BY_STATUS.get(status)
    if rule is not None:
        return rule
    return OTHER_5XX if status >= 500 else FINAL


def rule_for(exc: UpstreamError) -> Rule:
    """The rule for a failed call: by its status when the provider answered, else its code.
    A code the table does not know (an error event the upstream streamed) is final."""
    if exc.final:
        return FINAL
    if exc.status is not None:
        return rule_for_status(exc.status)
    return BY_CODE.get(exc.code, FINAL)


def fault_name(exc: UpstreamError) -> str:
    """How a deployment's health names the failure: ``HTTP 503``, or the transport's code."""
    return f"HTTP {exc.status}" if exc.status is not None else exc.code


def backoff_s(attempt: int, retry_after_s: float | None, base_s: float, max_s: float) -> float:
    """Exponential backoff with jitter, never shorter than the provider's ``Retry-After``."""
    delay = min(max_s, base_s * 2 ** max(0, attempt - 1)) * random.uniform(0.8, 1.2)
    return float(max(delay, retry_after_s or 0.0))


@dataclass(frozen=True)
class Attempt:
    """How one deferred attempt ended: a final ``outcome``, or a retry in ``retry_in_s``.

    ``deployment`` names the deployment that was called (the retry prefers another);
    ``counted`` is False when no call was made because no deployment could take it (that
    wait does not use up one of ``max_attempts``); ``path`` is the executor the attempt was
    routed to (the metrics' label; the row's ``executor`` is only what ``outcome`` says).
    """

    outcome: Outcome | None = None
    retry_in_s: float | None = None
    error: dict[str, Any] | None = None
    deployment: str | None = None
    counted: bool = True
    path: str | None = None


EXPIRED = Outcome(status=Status.EXPIRED, error=error(ErrorCode.REQUEST_EXPIRED))


@dataclass(frozen=True)
class Window:
    """When deferred work must be done by, and how retries are spaced."""

    expires_at: dt.datetime
    max_attempts: int
    base_s: float
    max_s: float
    expired: Outcome = EXPIRED  # the outcome of work whose window passed (a batch line's own)


def after_failure(exc: UpstreamError, attempt: int, window: Window) -> Attempt:
    """A retry if the policy allows one and it would start inside the window; else the end."""
    if not rule_for(exc).retryable:
        return Attempt(failed(exc, exc.message))
    if attempt >= window.max_attempts:
        return Attempt(failed(exc, f"{exc.message} (gave up after {attempt} attempts)"))
    delay = backoff_s(attempt, exc.retry_after_s, window.base_s, window.max_s)
    if dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay) < window.expires_at:
        return Attempt(retry_in_s=delay, error=exc.as_error())
    # Retrying would start after the window: the request expires now, saying why.
    assert window.expired.error is not None
    source = "Retry-After" if delay == exc.retry_after_s else "backoff"
    return Attempt(
        Outcome(
            status=Status.EXPIRED,
            error={
                "code": window.expired.error["code"],
                "message": f"Not retried: the next attempt would start in {delay:.0f} s"
                f" ({source}), after the window ends. Last error: {exc}",
            },
        )
    )


def failed(exc: UpstreamError, message: str) -> Outcome:
    """A final failure: the provider's status and body, if it answered, and the reason."""
    return Outcome(
        status=Status.FAILED,
        response_status=exc.status,
        response_body=exc.body,
        error={"code": exc.code, "message": message},
    )
