"""The outermost middleware: every failure leaves as an OpenAI-format error, never a trace.

It also counts every 429 answer (``tiergate_too_many_requests_total``) by why: a key over its
rpm/tpm, a key's budget spent, anything else (an upstream's 429 passed on, a flex request
that expired waiting for capacity). Only the first message of a response is looked at, and
only a refusal increments anything.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import OTHER_CODE, Metrics
from app.openai.errors import APIError, error_body, json_response, unavailable
from app.store.db import database_unavailable
from app.vocabulary import LimitCode, LimitKind, RequestErrorCode

log = logging.getLogger("tiergate.errors")

# Where an exception handler inside leaves the code of a 429 it answered (scope key).
REFUSAL = "tiergate.refusal"
_LIMIT_KINDS = frozenset(LimitKind)


def refusal_code(exc: APIError) -> str:
    """What a 429 ``APIError`` is counted as: the key's rate limits, its budget, or other."""
    if exc.type in _LIMIT_KINDS:
        return LimitCode.RATE_LIMIT_EXCEEDED
    if exc.code == LimitCode.INSUFFICIENT_QUOTA:
        return LimitCode.INSUFFICIENT_QUOTA
    return OTHER_CODE


class ErrorMiddleware:
    """Turns ``APIError`` into its response, database outages into 503, the rest into 500."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        metrics = self.metrics

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if not started and message["type"] == "http.response.start":
                started = True
                if message["status"] == 429 and metrics is not None:
                    metrics.refused(scope.get(REFUSAL, OTHER_CODE))
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except APIError as exc:
            if started:
                raise
            if exc.status == 429 and metrics is not None:
                metrics.refused(refusal_code(exc))
            await exc.response()(scope, receive, send)
        except Exception as exc:
            if started:
                raise
            if database_unavailable(exc):
                log.warning("database unavailable: %s", exc)
                await unavailable().response()(scope, receive, send)
                return
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            body = error_body(
                "The server had an error processing your request.",
                type="server_error",
                code=RequestErrorCode.INTERNAL_ERROR,
            )
            await json_response(body, 500)(scope, receive, send)
