"""The tier middleware: every inference call is read and classified here, once.

``POST /v1/responses``, ``/v1/chat/completions`` and ``/v1/embeddings`` are read (up to the
configured size, under the process's byte budget) and validated; the decision (a ``Call``: its
model, tier, ``background``, ``stream``) is recorded in the request scope for the routes that
handle it (``app/gateway/inference.py``). Everything else passes through untouched, and the
router answers other methods with its 405. Workers call providers directly through
``app/upstream/client.py``, so no internal bypass header exists.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app import tracing
from app.gateway.bodies import ByteBudget, Hold, declared_size, read_body
from app.gateway.middleware.auth import current_key
from app.openai.validation import INFERENCE_ENDPOINTS, Call, classify
from app.settings import Settings
from app.vocabulary import Header

# The scope key under which the decision travels to the route.
CLASSIFIED = "tiergate.classified"


@dataclass
class Classified:
    """The middleware's decision: the validated call, and the bytes of the budget it holds
    (released once the answer is sent, or once a deferred call is stored)."""

    call: Call
    hold: Hold


def classified(scope: Scope) -> Classified:
    """The decision for this request, taken out of the scope: the handler's frame owns the
    body from here, so it can drop it once it is stored (deferred) or sent (realtime)."""
    decision: Classified = scope.pop(CLASSIFIED)
    return decision


class TierMiddleware:
    """Reads and classifies inference calls by ``service_tier`` and ``background``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        budget: ByteBudget,
        answer: ASGIApp | None = None,
    ) -> None:
        self.app = app
        # What answers a classified call: the inference handler itself, rather than the
        # router, its routes and their two exception layers with their send wrappers.
        self.answer = answer or app
        self.settings = settings
        self.budget = budget
        self.limit = settings.limits.max_body_bytes
        self.read_timeout_s = settings.limits.body_read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"].rstrip("/")
        if endpoint not in INFERENCE_ENDPOINTS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = declared_size(headers, self.limit)
        hold = await self.budget.take(self.budget.cost(declared, self.limit))
        try:
            raw = await read_body(receive, headers, self.limit, self.read_timeout_s)
            pin = headers.get(Header.DEPLOYMENT)
            scope[CLASSIFIED] = Classified(
                classify(endpoint, raw, self.settings, current_key(scope), pin=pin), hold
            )
            del raw
            if tracing.tracer is not None:
                _classified_event(scope[CLASSIFIED].call)
            scope["path"] = endpoint  # the route's own spelling (no trailing slash)
            await self.answer(scope, receive, send)
        finally:
            hold.release()


def _classified_event(call: Call) -> None:
    """The tier decision, as an event on the server span."""
    tracing.event(
        "classify",
        {
            "gen_ai.operation.name": tracing.operation(call.endpoint),
            "gen_ai.request.model": call.model.name,
            "tiergate.tier": call.tier,
            "tiergate.background": call.background,
            "tiergate.stream": call.stream,
            "tiergate.deployment": call.pin,
        },
    )
