"""The outermost middleware: every failure leaves as an OpenAI-format error, never a trace."""

from __future__ import annotations

import logging

import asyncpg
import sqlalchemy.exc
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import APIError, error_body, json_response, unavailable

log = logging.getLogger("tiergate.errors")


def database_unavailable(exc: BaseException) -> bool:
    """True for the errors a down or restarting database produces."""
    if isinstance(exc, sqlalchemy.exc.TimeoutError | sqlalchemy.exc.OperationalError):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError | sqlalchemy.exc.InterfaceError):
        exc = exc.orig or exc  # type: ignore[assignment]
        cause = getattr(exc, "__cause__", None)
        if cause is not None:
            exc = cause
    return isinstance(
        exc,
        OSError
        | ConnectionError
        | asyncpg.PostgresConnectionError
        | asyncpg.CannotConnectNowError
        | asyncpg.InterfaceError
        | asyncpg.AdminShutdownError
        | asyncpg.CrashShutdownError
        | asyncpg.TooManyConnectionsError,
    )


class ErrorMiddleware:
    """Turns ``APIError`` into its response, database outages into 503, the rest into 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except APIError as exc:
            if started:
                raise
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
                code="internal_error",
            )
            await json_response(body, 500)(scope, receive, send)
