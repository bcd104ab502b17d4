"""The tier middleware: every inference call is classified here, once.

``POST /v1/responses``, ``/v1/chat/completions`` and ``/v1/embeddings`` are read (up to the
configured size), validated and sent either to the realtime proxy or to the deferred
(flex/background) path. Everything else passes through to the router untouched. Workers call
providers directly through ``app/upstream.py``, so no internal bypass header exists.
"""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth import current_key
from app.body_budget import ByteBudget
from app.deferred import DeferredCalls
from app.errors import APIError
from app.proxy import RealtimeProxy
from app.settings import Settings
from app.validation import INFERENCE_ENDPOINTS, classify


def declared_size(headers: Headers, limit: int) -> int | None:
    """The body size the client announced (None if it did not); 413 if over ``limit``."""
    declared = headers.get("content-length")
    if declared is None or not declared.isdigit():
        return None
    if int(declared) > limit:
        raise _too_big(limit)
    return int(declared)


def _too_big(limit: int) -> APIError:
    return APIError(
        413, f"The request body exceeds the limit of {limit} bytes.", code="request_too_large"
    )


async def read_body(receive: Receive, headers: Headers, limit: int, timeout_s: float) -> bytearray:
    """The whole request body; 413 as soon as it exceeds ``limit`` bytes, 408 if the client
    takes longer than ``timeout_s`` to send it (a trickle must not hold its share for ever)."""
    declared_size(headers, limit)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise APIError(400, "The client disconnected while sending the body.")
                body += message.get("body", b"")
                if len(body) > limit:
                    raise _too_big(limit)
                if not message.get("more_body", False):
                    return body
    except TimeoutError:
        raise APIError(
            408,
            f"The request body did not arrive within {timeout_s:g} s.",
            code="request_timeout",
            headers={"connection": "close"},
        ) from None


class TierMiddleware:
    """Routes inference calls by ``service_tier`` and ``background``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        proxy: RealtimeProxy,
        deferred: DeferredCalls,
        budget: ByteBudget,
    ) -> None:
        self.app = app
        self.settings = settings
        self.proxy = proxy
        self.deferred = deferred
        self.budget = budget
        self.limit = settings.limits.max_body_bytes
        self.read_timeout_s = settings.limits.body_read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = scope["path"].rstrip("/") if scope["type"] == "http" else None
        if endpoint not in INFERENCE_ENDPOINTS:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":  # the router has no route here to say so
            raise APIError(
                405,
                f"Method {scope['method']} not allowed on {endpoint}",
                code="method_not_allowed",
                headers={"allow": "POST"},
            )
        headers = Headers(scope=scope)
        declared = declared_size(headers, self.limit)
        key = current_key(scope)
        hold = await self.budget.take(self.budget.cost(declared, self.limit))
        try:
            raw = await read_body(receive, headers, self.limit, self.read_timeout_s)
            call = classify(endpoint, raw, self.settings, key)
            del raw
            # The handler's frame owns the body from here, so it can drop it once it is stored
            # (deferred) or sent (realtime); a stream still refers to it until it ends.
            streaming = call.stream
            if call.deferred:
                handler = self.deferred.handle(call, key, receive, accepted=hold.release)
            else:
                handler = self.proxy.handle(call, key)
            del call
            response = await handler
            if not streaming:
                hold.release()
            await response(scope, receive, send)
        finally:
            hold.release()
