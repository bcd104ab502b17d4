"""Reading, cancelling and deleting requests by id (``/v1/responses/{id}`` and friends)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from app.api.routes.params import page_params, path_id, services, sort_order
from app.gateway.middleware.auth import current_key
from app.openai.errors import bad_request, json_response, not_found
from app.openai.items import listed_items
from app.openai.objects import deleted_object, list_object, response_object
from app.store.requests import RequestStore
from app.vocabulary import Endpoint, RequestErrorCode


def _store(request: Request) -> RequestStore:
    return services(request).requests


async def retrieve(request: Request) -> Response:
    """A Response by id; with ``stream=true`` its events after ``starting_after``, then the
    live ones until the terminal event (``app/gateway/follow.py``)."""
    rid = path_id(request, "response")
    stream = _flag(request, "stream")
    after = _starting_after(request) if stream else -1
    owner = current_key(request.scope).id
    row = await _store(request).get(rid, owner)
    if row is None:
        raise not_found("response", rid)
    if not stream:
        return json_response(response_object(row), headers={"x-request-id": rid})
    events = services(request).streams.follow(rid, owner, after)
    headers = {"x-request-id": rid, "cache-control": "no-cache"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def _flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name)
    if raw in (None, "", "false", "0"):
        return False
    if raw in ("true", "1"):
        return True
    raise bad_request(
        f"'{name}' must be true or false.", param=name, code=RequestErrorCode.INVALID_VALUE
    )


MAX_SEQUENCE_DIGITS = 9


def _starting_after(request: Request) -> int:
    """``starting_after``: a sequence number (the stream goes on after it), -1 if absent."""
    raw = request.query_params.get("starting_after")
    if raw is None or raw == "":
        return -1
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_SEQUENCE_DIGITS):
        raise bad_request(
            "'starting_after' must be a non-negative integer (a sequence number).",
            param="starting_after",
            code=RequestErrorCode.INVALID_VALUE,
        )
    return int(raw)


async def cancel(request: Request) -> Response:
    rid = path_id(request, "response")
    key = current_key(request.scope)
    store = _store(request)
    row = await store.get(rid, key.id)
    if row is None:
        raise not_found("response", rid)
    if not row.background:
        raise bad_request(
            "Only responses created with background=true can be cancelled.",
            code=RequestErrorCode.NOT_BACKGROUND,
        )
    if await store.cancel(rid, key.id):
        row = await store.get(rid, key.id)
        if row is None:
            raise not_found("response", rid)
    return json_response(response_object(row), headers={"x-request-id": rid})


async def delete(request: Request) -> Response:
    rid = path_id(request, "response")
    if not await _store(request).delete(rid, current_key(request.scope).id):
        raise not_found("response", rid)
    return json_response(deleted_object(rid))


async def input_items(request: Request) -> Response:
    """A Response's input items, a conversation's history included (the SDK's
    ``responses.input_items.list``), newest first unless ``order=asc``."""
    rid = path_id(request, "response")
    after, limit = page_params(request, default=20, maximum=100)
    order = sort_order(request)
    row = await _store(request).get(rid, current_key(request.scope).id)
    if row is None or row.endpoint != Endpoint.RESPONSES:
        raise not_found("response", rid)
    items = listed_items(rid, (row.body or {}).get("input"))
    if order == "desc":
        items.reverse()
    start = 0
    if after is not None:
        start = next((i + 1 for i, item in enumerate(items) if item.get("id") == after), -1)
        if start < 0:
            raise bad_request(f"No input item '{after}' in response {rid}.", param="after")
    page = items[start : start + limit]
    return json_response(
        list_object(page, start + limit < len(items)), headers={"x-request-id": rid}
    )


routes = [
    Route("/v1/responses/{id}", retrieve, methods=["GET"]),
    Route("/v1/responses/{id}", delete, methods=["DELETE"]),
    Route("/v1/responses/{id}/cancel", cancel, methods=["POST"]),
    Route("/v1/responses/{id}/input_items", input_items, methods=["GET"]),
]
