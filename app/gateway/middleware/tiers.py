"""The tier middleware: every inference call is classified here, once.

``POST /v1/responses``, ``/v1/chat/completions`` and ``/v1/embeddings`` are read (up to the
configured size), validated and sent either to the realtime proxy or to the deferred
(flex/background) path. Everything else passes through to the router untouched. Workers call
providers directly through ``app/upstream/client.py``, so no internal bypass header exists.
"""

from __future__ import annotations

import dataclasses

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.cache.service import BYPASSED, Lookup, ResponseCache, cache_of, skips
from app.calls.conversations import Conversations
from app.calls.limits import Budgets, RateLimiter, estimate_tokens
from app.gateway.bodies import ByteBudget, declared_size, read_body
from app.gateway.cached import CachedAnswers
from app.gateway.deferred import DeferredCalls
from app.gateway.middleware.auth import current_key
from app.gateway.realtime import RealtimeProxy
from app.openai.errors import APIError
from app.openai.validation import INFERENCE_ENDPOINTS, check_for_chat, classify
from app.settings import Settings
from app.vocabulary import Header


class TierMiddleware:
    """Routes inference calls by ``service_tier`` and ``background``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        proxy: RealtimeProxy,
        deferred: DeferredCalls,
        conversations: Conversations,
        budget: ByteBudget,
        limiter: RateLimiter,
        budgets: Budgets,
        cache: ResponseCache,
        cached: CachedAnswers,
    ) -> None:
        self.cache = cache
        self.cached = cached
        self.limiter = limiter
        self.budgets = budgets
        self.app = app
        self.settings = settings
        self.proxy = proxy
        self.deferred = deferred
        self.conversations = conversations
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
            call = classify(endpoint, raw, self.settings, key, pin=headers.get(Header.DEPLOYMENT))
            del raw
            if "previous_response_id" in call.body:  # the history, for every tier alike
                call = await self.conversations.resolve(call, key)
                check_for_chat(call.body, self.settings, call.model, call.pin)
            # Every tier: a spent budget takes no new work (work accepted before finishes).
            await self.budgets.check(key)
            # The handler's frame owns the body from here, so it can drop it once it is stored
            # (deferred) or sent (realtime); a stream still refers to it until it ends.
            streaming = call.stream
            extra: dict[str, str] = {}
            if not call.deferred and key.limits.rated:
                tokens = estimate_tokens(call.body)
                extra = await self.limiter.admit(key, tokens)
                call = dataclasses.replace(call, estimated_tokens=tokens)
            lookup: Lookup | None = None
            if cache_of(call.model) is not None:
                lookup = BYPASSED
                if not skips(headers.get(Header.CACHE), key.cache_enabled):
                    lookup = await self.cache.lookup(call.endpoint, call.body, call.model, key.id)
                self.cache.count(call.model.name, lookup.result)
                call = dataclasses.replace(call, cache=lookup.result)
                extra = {**extra, Header.CACHE: str(lookup.result)}
            if lookup is not None and lookup.hit:
                handler = self.cached.answer(call, key, lookup)
            elif call.deferred:  # over its rate, such work waits in the queue: never refused
                handler = self.deferred.handle(call, key, receive, accepted=hold.release)
            else:
                handler = self.proxy.handle(call, key, lookup)
            del call, lookup
            try:
                response = await handler
            except APIError as exc:  # the cache's word goes on errors too
                if Header.CACHE in extra:
                    exc.headers = {**exc.headers, Header.CACHE: extra[Header.CACHE]}
                raise
            if not streaming:
                hold.release()
            if extra:
                send = _with_headers(send, extra)
            await response(scope, receive, send)
        finally:
            hold.release()


def _with_headers(send: Send, extra: dict[str, str]) -> Send:
    """``send`` adding ``extra`` headers to the response's start, unless the response set
    them itself (a flex answer knows better what the cache did than its acceptance)."""

    raw = [(name.encode(), value.encode()) for name, value in extra.items()]

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":  # names tiergate alone sets: appended
            headers = message.get("headers", ())
            present = {name.lower() for name, _ in headers}
            message["headers"] = [*headers, *(h for h in raw if h[0] not in present)]
        await send(message)

    return sending
