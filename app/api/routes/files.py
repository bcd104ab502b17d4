"""``/v1/files``: upload (multipart, streamed into PostgreSQL), list, read, delete.

A file uploaded with ``expires_after`` is a 404 once that has passed; the workers' sweep
deletes it.
"""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive

from app.api.routes.params import expires_after, page_params, path_id, services, sort_order
from app.gateway.middleware.auth import current_key
from app.ids import new_id
from app.openai.errors import APIError, bad_request, json_response, not_found
from app.openai.objects import file_object, list_object
from app.store.files import FileStore
from app.vocabulary import RequestErrorCode

UPLOAD_PURPOSES = frozenset({"batch"})
FILE_PURPOSES = frozenset({"batch", "batch_output"})
READ_BYTES = 1024 * 1024
# Multipart framing around the file itself.
ENVELOPE_BYTES = 64 * 1024


def _store(request: Request) -> FileStore:
    return services(request).files


def _too_large(limit: int) -> APIError:
    return APIError(
        413, f"Files may be at most {limit} bytes.", code=RequestErrorCode.FILE_TOO_LARGE
    )


def _bounded(receive: Receive, limit: int, error: APIError) -> Receive:
    """``receive`` that raises ``error`` once more than ``limit`` body bytes arrived: a chunked
    upload declares no length, and Starlette would otherwise spool all of it to disk."""
    seen = 0

    async def bounded() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise error
        return message

    return bounded


async def upload(request: Request) -> Response:
    limit = services(request).settings.limits.max_file_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + ENVELOPE_BYTES:
        raise _too_large(limit)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise bad_request("Upload a file as multipart/form-data with 'file' and 'purpose'.")
    request = Request(
        request.scope, _bounded(request.receive, limit + ENVELOPE_BYTES, _too_large(limit))
    )
    # Starlette spools the file part to a temporary file (1 MiB in memory at most).
    async with request.form(max_files=1, max_fields=8) as form:
        purpose = form.get("purpose")
        upload = form.get("file")
        expires_s = expires_after(form)
        if not isinstance(purpose, str) or purpose not in UPLOAD_PURPOSES:
            raise bad_request(
                f"'purpose' must be one of {sorted(UPLOAD_PURPOSES)}.", param="purpose"
            )
        if not isinstance(upload, UploadFile):
            raise bad_request("Missing required parameter: 'file'.", param="file")
        if upload.filename and "\x00" in upload.filename:
            raise bad_request("The file name contains a NUL character.", param="file")
        store = _store(request)
        file_id = new_id("file-")
        writer = await store.create(
            id=file_id,
            owner=current_key(request.scope).id,
            filename=upload.filename or "upload.jsonl",
            purpose=purpose,
            expires_s=expires_s,
        )
        try:
            while chunk := await upload.read(READ_BYTES):
                if writer.size + len(chunk) > limit:
                    raise _too_large(limit)
                await writer.write(chunk)
            await writer.close()
        except BaseException:
            await store.drop_upload(file_id, current_key(request.scope).id)
            raise
    row = await store.get(file_id, current_key(request.scope).id)
    assert row is not None
    return json_response(file_object(row))


async def list_files(request: Request) -> Response:
    after, limit = page_params(request, default=10_000, maximum=10_000)
    order = sort_order(request)
    purpose = request.query_params.get("purpose") or None
    if purpose is not None and purpose not in FILE_PURPOSES:
        return json_response(list_object([], False))  # no file has any other purpose
    rows = await _store(request).page(
        current_key(request.scope).id,
        purpose=purpose,
        after=after,
        limit=limit + 1,
        order=order,
    )
    return json_response(list_object([file_object(r) for r in rows[:limit]], len(rows) > limit))


async def retrieve(request: Request) -> Response:
    file_id = path_id(request, "file")
    row = await _store(request).get(file_id, current_key(request.scope).id)
    if row is None:
        raise not_found("file", file_id)
    return json_response(file_object(row))


async def content(request: Request) -> Response:
    file_id = path_id(request, "file")
    store = _store(request)
    row = await store.get(file_id, current_key(request.scope).id)
    if row is None:
        raise not_found("file", file_id)
    return StreamingResponse(
        store.chunks(file_id),
        media_type="application/octet-stream",
        headers={"content-length": str(row.bytes)},
    )


async def delete(request: Request) -> Response:
    file_id = path_id(request, "file")
    if not await _store(request).delete(file_id, current_key(request.scope).id):
        raise not_found("file", file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})


routes = [
    Route("/v1/files", upload, methods=["POST"]),
    Route("/v1/files", list_files, methods=["GET"]),
    Route("/v1/files/{id}", retrieve, methods=["GET"]),
    Route("/v1/files/{id}", delete, methods=["DELETE"]),
    Route("/v1/files/{id}/content", content, methods=["GET"]),
]
