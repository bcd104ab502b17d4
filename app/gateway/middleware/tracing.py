"""The gateway's server span of every ``/v1`` call (installed only when tracing is on).

Outermost, so that the span covers authentication, classification and the error responses
``ErrorMiddleware`` makes; it continues the client's ``traceparent`` when one is sent. The
steps inside add events to it (``auth``, ``classify``, ``limits``) or child spans
(``cache lookup``; docs/observability.md).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import tracing

# Collections whose next segment is an object's id (``/v1/responses/resp_...``).
NESTED = ("/v1/chat/completions/",)


def route(path: str) -> str:
    """``path`` with the object id replaced by ``{id}`` (a span name of low cardinality)."""
    path = path.rstrip("/") or "/"
    if path.startswith("/v1/organization/"):
        return path
    parts = path.split("/")
    at = 4 if path.startswith(NESTED) else 3  # "", "v1", collection, id
    if len(parts) > at and not (at == 3 and parts[2] == "chat"):
        parts[at] = "{id}"
    return "/".join(parts)


class TracingMiddleware:
    """A server span around each ``/v1`` call, with the status it was answered with."""

    def __init__(self, app: ASGIApp, *, prefix: str = "/v1") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("traceparent")
        name = route(scope["path"])
        with tracing.server_span(scope["method"], name, incoming, {"http.route": name}) as span:

            async def traced_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        tracing.failed(span, f"HTTP {status}")
                await send(message)

            await self.app(scope, receive, traced_send)
