"""``/v1/batches``: create (validation runs in a job), retrieve, list, cancel."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app import tracing
from app.api.routes.params import page_params, path_id, services
from app.gateway.bodies import read_body
from app.gateway.middleware.auth import current_key
from app.ids import new_id, plausible_id
from app.openai.errors import bad_request, json_response, not_found
from app.openai.objects import batch_object, list_object
from app.openai.validation import INFERENCE_ENDPOINTS, check_metadata, parse_json
from app.store.batches import BatchStore

MAX_BODY_BYTES = 64 * 1024


def _store(request: Request) -> BatchStore:
    return services(request).batches


async def create(request: Request) -> Response:
    limits = services(request).settings.limits
    raw = await read_body(
        request.receive, request.headers, MAX_BODY_BYTES, limits.body_read_timeout_s
    )
    body = parse_json(raw)
    endpoint = body.get("endpoint")
    if endpoint not in INFERENCE_ENDPOINTS:
        raise bad_request(
            f"'endpoint' must be one of {list(INFERENCE_ENDPOINTS)}.", param="endpoint"
        )
    windows = limits.batch_windows
    window = body.get("completion_window")
    if not isinstance(window, str) or window not in windows:
        raise bad_request(
            f"'completion_window' must be one of {sorted(windows)}.", param="completion_window"
        )
    check_metadata(body)
    file_id = body.get("input_file_id")
    key = current_key(request.scope)
    await services(request).budgets.check(key)  # a spent budget takes no new work
    if not isinstance(file_id, str):
        raise bad_request("Missing required parameter: 'input_file_id'.", param="input_file_id")
    found = await services(request).files.get(file_id, key.id) if plausible_id(file_id) else None
    if found is None:
        raise not_found("file", file_id)
    if found.purpose != "batch":
        raise bad_request("The input file must have purpose 'batch'.", param="input_file_id")
    batch_id = new_id("batch_")
    store = _store(request)
    await store.create(
        id=batch_id,
        owner=key.id,
        endpoint=endpoint,
        window=window,
        window_s=windows[window],
        file_id=file_id,
        metadata=body.get("metadata"),
        # Its jobs continue this request's trace (the tracing middleware's server span).
        traceparent=tracing.traceparent() if tracing.tracer is not None else None,
    )
    row = await store.get(batch_id, key.id)
    assert row is not None
    return json_response(batch_object(row))


async def retrieve(request: Request) -> Response:
    batch_id = path_id(request, "batch")
    row = await _store(request).get(batch_id, current_key(request.scope).id)
    if row is None:
        raise not_found("batch", batch_id)
    return json_response(batch_object(row))


async def list_batches(request: Request) -> Response:
    after, limit = page_params(request, default=20, maximum=100)
    rows = await _store(request).page(current_key(request.scope).id, after=after, limit=limit + 1)
    return json_response(list_object([batch_object(r) for r in rows[:limit]], len(rows) > limit))


async def cancel(request: Request) -> Response:
    batch_id = path_id(request, "batch")
    key = current_key(request.scope)
    store = _store(request)
    if await store.get(batch_id, key.id) is None:
        raise not_found("batch", batch_id)
    await store.cancel(batch_id, key.id)  # a batch already ending is left as it is
    row = await store.get(batch_id, key.id)
    assert row is not None
    return json_response(batch_object(row))


routes = [
    Route("/v1/batches", create, methods=["POST"]),
    Route("/v1/batches", list_batches, methods=["GET"]),
    Route("/v1/batches/{id}", retrieve, methods=["GET"]),
    Route("/v1/batches/{id}/cancel", cancel, methods=["POST"]),
]
