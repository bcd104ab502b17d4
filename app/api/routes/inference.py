"""``POST /v1/responses``, ``/v1/chat/completions``, ``/v1/embeddings``: the inference calls.

The tier middleware has classified the call already; the handler lives in the gateway
(``app/gateway/inference.py``) with the tiers that answer it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.api.routes.params import services
from app.vocabulary import Endpoint


async def create(request: Request) -> Response:
    """A Response, chat completion or embeddings, on the tier the call asked for (the tier
    middleware answers these calls itself, see ``TierMiddleware``'s ``answer``)."""
    return await services(request).inference.handle(request.scope, request.receive)


routes = [Route(str(endpoint), create, methods=["POST"]) for endpoint in Endpoint]
