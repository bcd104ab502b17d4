"""The outermost middleware: every failure leaves as an OpenAI-format error, never a trace."""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.openai.errors import APIError, error_body, json_response, unavailable
from app.store.db import database_unavailable
from app.vocabulary import RequestErrorCode

log = logging.getLogger("tiergate.errors")


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
                code=RequestErrorCode.INTERNAL_ERROR,
            )
            await json_response(body, 500)(scope, receive, send)
