"""OpenAI's stored chat completions: ``GET /v1/chat/completions`` (list),
``GET/POST/DELETE /v1/chat/completions/{id}`` (retrieve, update metadata, delete) and
``GET /v1/chat/completions/{id}/messages``.

Every chat completion tiergate answered is a row (any tier: realtime, flex, batch lines,
cache hits); the completed ones are the stored ChatCompletions. The list leaves out those
created with ``store: false``; by id, any completed one of the key is found, as before this
API existed. A key sees its own only (admin keys too); another key's id is a 404 on every
route. SQL: ``app/store/chat_completions.py``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.api.routes.params import (
    metadata_filter,
    page_params,
    path_id,
    services,
    sort_order,
    text_param,
)
from app.gateway.bodies import read_body
from app.gateway.middleware.auth import current_key
from app.openai.errors import APIError, bad_request, json_response, not_found
from app.openai.objects import list_object
from app.openai.stored_chat import (
    chat_completion_object,
    deleted_chat_object,
    message_index,
    stored_messages,
)
from app.openai.validation import check_metadata, parse_json
from app.store.requests import RequestRow
from app.vocabulary import Endpoint, RequestErrorCode, Status

WHAT = "chat completion"
MAX_UPDATE_BYTES = 64 * 1024  # 16 pairs of 64 + 512 characters fit many times over


async def _completed(request: Request, rid: str) -> RequestRow:
    """The key's completed chat completion ``rid``: a 404 if there is none (another key's,
    deleted, not a chat completion), a 404 ``not_ready`` while it runs or once it failed."""
    row = await services(request).requests.get(rid, current_key(request.scope).id)
    if row is None or row.endpoint != Endpoint.CHAT:
        raise not_found(WHAT, rid)
    if row.status != Status.COMPLETED:
        raise APIError(
            404,
            f"Chat completion {rid} is {row.status}; GET /v1/responses/{rid} shows its progress.",
            code=RequestErrorCode.NOT_READY,
        )
    return row


async def retrieve(request: Request) -> Response:
    """A finished chat completion by id (the SDK's ``chat.completions.retrieve``)."""
    rid = path_id(request, WHAT)
    row = await _completed(request, rid)
    return json_response(chat_completion_object(row), headers={"x-request-id": rid})


async def list_completions(request: Request) -> Response:
    """The key's stored chat completions, oldest first unless ``order=desc`` (the SDK's
    ``chat.completions.list``)."""
    after, limit = page_params(request, default=20, maximum=100)
    order = sort_order(request, default="asc")
    model = text_param(request, "model")
    metadata = metadata_filter(request)
    rows = await services(request).chat_completions.page(
        current_key(request.scope).id,
        order=order,
        limit=limit + 1,
        after=after,
        model=model,
        metadata=metadata,
    )
    data = [chat_completion_object(row) for row in rows[:limit]]
    return json_response(list_object(data, len(rows) > limit))


async def update(request: Request) -> Response:
    """Replace a chat completion's ``metadata`` (the only field OpenAI lets one change)."""
    rid = path_id(request, WHAT)
    await _completed(request, rid)  # an unknown id is a 404 whatever the body
    limits = services(request).settings.limits
    raw = await read_body(
        request.receive, request.headers, MAX_UPDATE_BYTES, limits.body_read_timeout_s
    )
    body = parse_json(raw)
    if "metadata" not in body:
        raise bad_request(
            "Missing required parameter: 'metadata'.",
            param="metadata",
            code=RequestErrorCode.MISSING_REQUIRED_PARAMETER,
        )
    for field in body:
        if field != "metadata":
            raise bad_request(
                f"Unrecognized request argument supplied: '{field}'; only 'metadata' can be "
                "updated.",
                param=field,
                code=RequestErrorCode.UNKNOWN_PARAMETER,
            )
    check_metadata(body)
    metadata = body["metadata"] or {}
    store = services(request).chat_completions
    row = await store.set_metadata(rid, current_key(request.scope).id, metadata)
    if row is None:
        raise not_found(WHAT, rid)  # deleted meanwhile
    return json_response(chat_completion_object(row), headers={"x-request-id": rid})


async def delete(request: Request) -> Response:
    """Delete a chat completion: its id is a 404 everywhere afterwards; the row keeps its
    usage and cost for the reports (``deleted_at`` set, request and answer cleared)."""
    rid = path_id(request, WHAT)
    if not await services(request).chat_completions.delete(rid, current_key(request.scope).id):
        row = await _completed(request, rid)  # says why (404 or not_ready) ...
        if row.batch_id is not None:  # ... or it is a line of a batch still running
            raise bad_request(
                f"Chat completion {rid} is a line of batch {row.batch_id}, which is still "
                "running; delete it once the batch has ended.",
                code=RequestErrorCode.BATCH_NOT_FINISHED,
            )
        raise not_found(WHAT, rid)  # deleted meanwhile
    return json_response(deleted_chat_object(rid), headers={"x-request-id": rid})


async def messages(request: Request) -> Response:
    """The messages of a chat completion's request (the SDK's
    ``chat.completions.messages.list``), ids ``{completion id}-{index}``, in order unless
    ``order=desc``."""
    rid = path_id(request, WHAT)
    after_id, limit = page_params(request, default=20, maximum=100)
    order = sort_order(request, default="asc")
    row = await _completed(request, rid)
    body = row.body or {}
    count = len(body.get("messages") or [])
    after = None
    if after_id is not None:
        after = message_index(rid, after_id, count)
        if after is None:
            raise bad_request(f"No message '{after_id}' in chat completion {rid}.", param="after")
    page, has_more = stored_messages(rid, body, order=order, after=after, limit=limit)
    return json_response(list_object(page, has_more), headers={"x-request-id": rid})


routes = [
    Route(str(Endpoint.CHAT), list_completions, methods=["GET"]),
    Route("/v1/chat/completions/{id}", retrieve, methods=["GET"]),
    Route("/v1/chat/completions/{id}", update, methods=["POST"]),
    Route("/v1/chat/completions/{id}", delete, methods=["DELETE"]),
    Route("/v1/chat/completions/{id}/messages", messages, methods=["GET"]),
]
