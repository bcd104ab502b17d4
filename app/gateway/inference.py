"""The inference routes' handler: a classified call goes to the tier that answers it.

The tier middleware has read and classified the call (``middleware/tiers.py``). Here, for
every tier alike: ``previous_response_id`` is resolved into the input, a spent budget takes
no new work, a rate-limited key is admitted (realtime calls only: deferred work over its
rate waits in the queue, never refused), and the response cache is asked. Then the call is
answered from the cache (``cached.py``), accepted for a worker (``deferred.py``) or proxied at
once (``realtime.py``).
"""

from __future__ import annotations

import dataclasses

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app import logs, tracing
from app.cache.service import BYPASSED, Lookup, ResponseCache, cache_of, skips
from app.calls.conversations import Conversations
from app.calls.limits import Budgets, RateLimiter, estimate_tokens
from app.gateway.cached import CachedAnswers
from app.gateway.deferred import DeferredCalls
from app.gateway.middleware.auth import current_key
from app.gateway.middleware.tiers import classified
from app.gateway.realtime import RealtimeProxy
from app.ids import request_id
from app.keys import ApiKey
from app.openai.errors import APIError
from app.openai.validation import check_for_chat
from app.settings import Settings
from app.vocabulary import Header


class InferenceHandler:
    """Answers ``POST /v1/responses``, ``/v1/chat/completions`` and ``/v1/embeddings``."""

    def __init__(
        self,
        *,
        settings: Settings,
        proxy: RealtimeProxy,
        deferred: DeferredCalls,
        conversations: Conversations,
        limiter: RateLimiter,
        budgets: Budgets,
        cache: ResponseCache,
        cached: CachedAnswers,
    ) -> None:
        self.settings = settings
        self.proxy = proxy
        self.deferred = deferred
        self.conversations = conversations
        self.limiter = limiter
        self.budgets = budgets
        self.cache = cache
        self.cached = cached

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The classified call answered as an ASGI app: the tier middleware calls it directly,
        without the router and its exception layers (an ``APIError`` raised here becomes its
        response in ``ErrorMiddleware``, as it did in the router's exception handler)."""
        response = await self.handle(scope, receive)
        await response(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive) -> Response:
        """The answer to the classified call of the request of ``scope``."""
        decision = classified(scope)
        call, hold = decision.call, decision.hold
        del decision
        key = current_key(scope)
        rid = request_id(call.endpoint)
        logs.request_id.set(rid)  # every log line of this request names it
        if tracing.tracer is not None:
            tracing.annotate(
                tracing.current(),
                {
                    "gen_ai.operation.name": tracing.operation(call.endpoint),
                    "gen_ai.request.model": call.model.name,
                    "tiergate.tier": call.tier,
                    "tiergate.background": call.background,
                    "tiergate.request_id": rid,
                },
            )
        if "previous_response_id" in call.body:  # the history, for every tier alike
            call = await self.conversations.resolve(call, key)
            check_for_chat(call.body, self.settings, call.model, call.pin)
        # Every tier: a spent budget takes no new work (work accepted before finishes).
        await self.budgets.check(key)
        streaming = call.stream
        extra: dict[str, str] = {}
        if not call.deferred and key.limits.rated:
            tokens = estimate_tokens(call.body)
            extra = await self.limiter.admit(key, tokens)
            call = dataclasses.replace(call, estimated_tokens=tokens)
        if tracing.tracer is not None:
            _limits_event(key, call.deferred)
        lookup: Lookup | None = None
        if cache_of(call.model) is not None:
            lookup = BYPASSED
            if not skips(Headers(scope=scope).get(Header.CACHE), key.cache_enabled):
                if tracing.tracer is None:
                    lookup = await self.cache.lookup(call.endpoint, call.body, call.model, key.id)
                else:
                    with tracing.step("cache lookup") as span:
                        lookup = await self.cache.lookup(
                            call.endpoint, call.body, call.model, key.id
                        )
                        tracing.annotate(span, {"tiergate.cache": str(lookup.result)})
            if tracing.tracer is not None:
                tracing.annotate(tracing.current(), {"tiergate.cache": str(lookup.result)})
            self.cache.count(call.model.name, lookup.result)
            call = dataclasses.replace(call, cache=lookup.result)
            extra = {**extra, Header.CACHE: str(lookup.result)}
        if lookup is not None and lookup.hit:
            handler = self.cached.answer(call, key, lookup, rid=rid)
        elif call.deferred:  # over its rate, such work waits in the queue: never refused
            handler = self.deferred.handle(call, key, receive, rid=rid, accepted=hold.release)
        else:
            handler = self.proxy.handle(call, key, lookup, rid=rid)
        del call, lookup  # the handler's frame owns the body now
        try:
            response = await handler
        except APIError as exc:  # the cache's word goes on errors too
            if Header.CACHE in extra:
                exc.headers = {**exc.headers, Header.CACHE: extra[Header.CACHE]}
            raise
        if not streaming:
            hold.release()
        # Names tiergate alone sets, unless the answer set them itself (a flex answer knows
        # better what the cache did than its acceptance).
        for name, value in extra.items():
            response.headers.setdefault(name, value)
        return response


def _limits_event(key: ApiKey, deferred: bool) -> None:
    """What the budget and rate limits decided (admitted: a refusal is the span's 429)."""
    limits = key.limits
    tracing.event(
        "limits",
        {
            "tiergate.limits.rated": limits.rated,
            "tiergate.limits.budget": limits.budget_usd is not None,
            # deferred work over its rate waits in the queue instead
            "tiergate.limits.checked": limits.rated and not deferred,
        },
    )
