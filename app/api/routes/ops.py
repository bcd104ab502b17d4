"""Operational endpoints: liveness, readiness, Prometheus metrics, model list."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.api.openapi import openapi_document
from app.api.routes.params import services
from app.gateway.middleware.auth import current_key
from app.openai.errors import MAX_SHOWN_ID, APIError, error_body, json_response
from app.vocabulary import RequestErrorCode

READY_TIMEOUT_S = 2.0


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    engine = services(request).engine
    try:
        async with asyncio.timeout(READY_TIMEOUT_S), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        body = error_body(
            f"database unreachable: {type(exc).__name__}",
            type="server_error",
            code=RequestErrorCode.DATABASE_UNAVAILABLE,
        )
        return json_response(body, 503)
    return json_response({"status": "ready"})


async def metrics(request: Request) -> Response:
    gateway = services(request)
    depth = gateway.queue_depth
    counted = await depth.read()
    body = gateway.metrics.render(
        counted.depth, counted.age_s, gateway.hub.waiting, counted.oldest, depth.fleet
    )
    return Response(body, media_type="text/plain; version=0.0.4")


def model_object(name: str) -> dict[str, Any]:
    """The OpenAI Model object of a configured model."""
    return {"id": name, "object": "model", "created": 0, "owned_by": "tiergate"}


async def list_models(request: Request) -> Response:
    key = current_key(request.scope)
    data = [model_object(name) for name in services(request).settings.models if key.may_use(name)]
    return json_response({"object": "list", "data": data})


async def retrieve_model(request: Request) -> Response:
    """One model the caller's key may use; any other name is a 404 (whether it exists is not
    told to a key that may not use it)."""
    name: str = request.path_params["model"]
    key = current_key(request.scope)
    if name not in services(request).settings.models or not key.may_use(name):
        shown = name if len(name) <= MAX_SHOWN_ID else name[:MAX_SHOWN_ID] + "..."
        raise APIError(
            404,
            f"The model '{shown}' does not exist or you do not have access to it.",
            param="model",
            code=RequestErrorCode.MODEL_NOT_FOUND,
        )
    return json_response(model_object(name))


async def openapi(request: Request) -> Response:
    """The OpenAPI 3.1 document of every route (no key needed)."""
    return json_response(openapi_document(services(request).settings))


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/v1/models", list_models, methods=["GET"]),
    # ``path``: model names may hold slashes (the SDK sends them as %2F).
    Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
]
