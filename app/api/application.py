"""``create_app(settings, url)``: the gateway as one ASGI app, optionally with a companion task.

The gateway imports nothing of ``worker/``: ``tiergate serve`` hands in the in-process worker
as a companion that receives the gateway's shared services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from app import tracing
from app.api.routes import (
    batches,
    chat_completions,
    files,
    inference,
    ops,
    organization,
    responses,
)
from app.dashboard import routes as dashboard
from app.gateway.middleware.auth import AuthMiddleware
from app.gateway.middleware.errors import REFUSAL, ErrorMiddleware, refusal_code
from app.gateway.middleware.tiers import TierMiddleware
from app.gateway.middleware.tracing import TracingMiddleware
from app.gateway.services import Services
from app.openai.errors import APIError
from app.settings import Settings
from app.store.dburl import DatabaseURL
from app.vocabulary import RequestErrorCode

log = logging.getLogger("tiergate")


# A task run beside the gateway for its lifetime (``serve``'s in-process worker), given the
# gateway's shared services; cancelled when the gateway stops.
Companion = Callable[[Services], Coroutine[Any, Any, None]]


def create_app(
    settings: Settings, url: DatabaseURL, *, companion: Companion | None = None
) -> Starlette:
    """The gateway; ``companion`` runs in the same process for as long as it serves."""
    services = Services(settings, url)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Services]]:
        await services.start()
        worker_task: asyncio.Task[None] | None = None
        if companion is not None:
            worker_task = asyncio.create_task(companion(services), name="worker")
        log.info("tiergate gateway ready (models: %s)", ", ".join(settings.models))
        try:
            yield {"services": services}
        finally:
            if worker_task is not None:
                worker_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker_task
            await services.stop()

    app = Starlette(
        routes=[
            *inference.routes,
            *ops.routes,
            *responses.routes,
            *chat_completions.routes,
            *files.routes,
            *batches.routes,
            *organization.routes,
            *dashboard.routes,
        ],
        middleware=[
            # Only when tracing is on: off, a request crosses no layer of it.
            *([Middleware(TracingMiddleware)] if tracing.tracer is not None else []),
            Middleware(ErrorMiddleware, metrics=services.metrics),
            Middleware(AuthMiddleware, keys=services.key_cache),
            Middleware(
                TierMiddleware,
                settings=settings,
                budget=services.body_budget,
                answer=services.inference.serve,
            ),
        ],
        exception_handlers={
            APIError: _api_error,
            HTTPException: _http_error,
            404: _not_found,
            405: _not_allowed,
        },
        lifespan=lifespan,
    )
    app.state.services = services
    return app


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    if exc.status == 429:  # ErrorMiddleware counts it under this code
        request.scope[REFUSAL] = refusal_code(exc)
    return exc.response()


async def _not_found(request: Request, exc: Exception) -> Response:
    return APIError(
        404,
        f"Unknown route: {request.method} {request.url.path}",
        code=RequestErrorCode.UNKNOWN_URL,
    ).response()


async def _not_allowed(request: Request, exc: Exception) -> Response:
    # Starlette's Allow names the methods of the first route on the path only; a path served
    # by several routes (GET and DELETE /v1/files/{id}) allows all of theirs.
    allowed = {
        method
        for route in request.app.router.routes
        if isinstance(route, Route) and route.matches(request.scope)[0] == Match.PARTIAL
        for method in route.methods or ()
    }
    return APIError(
        405,
        f"Method {request.method} not allowed on {request.url.path}",
        code=RequestErrorCode.METHOD_NOT_ALLOWED,
        headers={"allow": ", ".join(sorted(allowed))},
    ).response()


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (e.g. a malformed multipart body) in the OpenAI format."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers) if exc.headers else None
    return APIError(exc.status_code, exc.detail, headers=headers).response()
