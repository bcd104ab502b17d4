"""The tier middleware: every inference call is classified here, once.

``POST /v1/responses``, ``/v1/chat/completions`` and ``/v1/embeddings`` are read (up to the
configured size), validated and sent either to the realtime proxy or to the deferred
(flex/background) path. Everything else passes through to the router untouched. Workers call
providers directly through ``app/upstream.py``, so no internal bypass header exists.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth import current_key
from app.deferred import DeferredCalls
from app.errors import APIError
from app.proxy import RealtimeProxy
from app.settings import Settings
from app.validation import INFERENCE_ENDPOINTS, classify


async def read_body(receive: Receive, headers: Headers, limit: int) -> bytes:
    """The whole request body, or 413 as soon as it exceeds ``limit`` bytes."""
    too_big = APIError(
        413, f"The request body exceeds the limit of {limit} bytes.", code="request_too_large"
    )
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise APIError(400, "The client disconnected while sending the body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class TierMiddleware:
    """Routes inference calls by ``service_tier`` and ``background``."""

    def __init__(
        self, app: ASGIApp, *, settings: Settings, proxy: RealtimeProxy, deferred: DeferredCalls
    ) -> None:
        self.app = app
        self.settings = settings
        self.proxy = proxy
        self.deferred = deferred
        self.limit = settings.limits.max_body_bytes

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
        raw = await read_body(receive, headers, self.limit)
        key = current_key(scope)
        call = classify(endpoint, raw, self.settings, key)
        if call.deferred:
            response = await self.deferred.handle(call, key, receive)
        else:
            response = await self.proxy.handle(call, key)
        await response(scope, receive, send)
