"""OpenAI object builders: Response objects and stored results, from request rows."""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any, Protocol

from app.ids import new_id
from app.vocabulary import (
    MESSAGES,
    Endpoint,
    ErrorCode,
    ResponseErrorCode,
    Status,
    response_error_code,
)

# What the builders read of the store's rows (``app.store``'s row classes, which this layer
# cannot import, have these attributes and more).


class UsageView(Protocol):
    """The token columns of a request or a batch."""

    @property
    def input_tokens(self) -> int | None: ...
    @property
    def cached_tokens(self) -> int | None: ...
    @property
    def output_tokens(self) -> int | None: ...
    @property
    def reasoning_tokens(self) -> int | None: ...
    @property
    def total_tokens(self) -> int | None: ...


class RequestView(UsageView, Protocol):
    """A request row (``app.store.requests.RequestRow``)."""

    @property
    def id(self) -> str: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def body(self) -> dict[str, Any]: ...
    @property
    def status(self) -> str: ...
    @property
    def background(self) -> bool: ...
    @property
    def service_tier(self) -> str: ...
    @property
    def created_at(self) -> dt.datetime: ...
    @property
    def finished_at(self) -> dt.datetime | None: ...
    @property
    def response_status(self) -> int | None: ...
    @property
    def response_body(self) -> Any: ...
    @property
    def error(self) -> dict[str, Any] | None: ...


class FileView(Protocol):
    """A stored file (``app.store.files.FileRow``)."""

    @property
    def id(self) -> str: ...
    @property
    def bytes(self) -> int: ...
    @property
    def created_at(self) -> dt.datetime: ...
    @property
    def filename(self) -> str: ...
    @property
    def purpose(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def expires_at(self) -> dt.datetime | None: ...


class BatchView(UsageView, Protocol):
    """A batch with its counts (``app.store.batches.BatchRow``)."""

    @property
    def id(self) -> str: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def model(self) -> str | None: ...
    @property
    def errors(self) -> dict[str, Any] | None: ...
    @property
    def input_file_id(self) -> str | None: ...
    @property
    def completion_window(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def output_file_id(self) -> str | None: ...
    @property
    def error_file_id(self) -> str | None: ...
    @property
    def created_at(self) -> dt.datetime: ...
    @property
    def in_progress_at(self) -> dt.datetime | None: ...
    @property
    def expires_at(self) -> dt.datetime: ...
    @property
    def finalizing_at(self) -> dt.datetime | None: ...
    @property
    def completed_at(self) -> dt.datetime | None: ...
    @property
    def failed_at(self) -> dt.datetime | None: ...
    @property
    def expired_at(self) -> dt.datetime | None: ...
    @property
    def cancelling_at(self) -> dt.datetime | None: ...
    @property
    def cancelled_at(self) -> dt.datetime | None: ...
    @property
    def total(self) -> int: ...
    @property
    def completed(self) -> int | None: ...
    @property
    def failed(self) -> int | None: ...
    @property
    def metadata(self) -> dict[str, str] | None: ...


class ResultLineView(Protocol):
    """A batch line as its result file shows it (``app.store.batches.ResultLine``)."""

    @property
    def id(self) -> str: ...
    @property
    def custom_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def response_status(self) -> int | None: ...
    @property
    def response_body(self) -> str | None: ...  # JSON text
    @property
    def error(self) -> dict[str, Any] | None: ...


# Row status -> Response.status
RESPONSE_STATUS = {
    Status.PENDING: "queued",
    Status.IN_PROGRESS: "in_progress",
    Status.COMPLETED: "completed",
    Status.FAILED: "failed",
    Status.CANCELLED: "cancelled",
    Status.EXPIRED: "failed",
}


def _ts(value: dt.datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def usage_object(row: UsageView) -> dict[str, Any] | None:
    """Responses-style ``usage`` of a request or batch row (None before any is known)."""
    if row.total_tokens is None:
        return None
    return {
        "input_tokens": int(row.input_tokens or 0),
        "input_tokens_details": {"cached_tokens": int(row.cached_tokens or 0)},
        "output_tokens": int(row.output_tokens or 0),
        "output_tokens_details": {"reasoning_tokens": int(row.reasoning_tokens or 0)},
        "total_tokens": int(row.total_tokens),
    }


def _output_from_chat(body: Any) -> list[dict[str, Any]]:
    """A chat completion's first choice as a Responses output message."""
    try:
        text = body["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        return []
    return [
        {
            "id": new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        }
    ]


def row_error(row: RequestView) -> dict[str, Any] | None:
    """What went wrong, as tiergate stored it: ``{"code", "message"}`` (None if nothing did).

    Clients of the blocking flex path get these codes in their HTTP errors; a Response object
    shows OpenAI's names instead (:func:`response_error`).
    """
    if row.status == Status.EXPIRED:  # the stored message says why (e.g. a Retry-After too far)
        return {
            "code": ErrorCode.REQUEST_EXPIRED,
            "message": (row.error or {}).get("message") or MESSAGES[ErrorCode.REQUEST_EXPIRED],
        }
    if row.status in (Status.FAILED, Status.CANCELLED) and row.error:
        return {
            "code": row.error.get("code") or "server_error",
            "message": row.error.get("message") or "The request failed.",
        }
    return None


def response_error(row: RequestView) -> dict[str, Any] | None:
    """A Response object's ``error``: one of OpenAI's ResponseError codes, tiergate's own code
    kept at the start of the message (``upstream_503: ...``). A cancelled Response has none."""
    stored = row_error(row)
    if stored is None or row.status == Status.CANCELLED:
        return None
    code = response_error_code(stored["code"], row.response_status)
    message = stored["message"]
    if code != stored["code"]:
        message = f"{stored['code']}: {message}"
    return {"code": code, "message": message}


def response_object(row: RequestView) -> dict[str, Any]:
    """The Response object a client sees for any request row, at any status."""
    body = row.body or {}
    stored = row.response_body
    obj: dict[str, Any]
    if row.status == Status.COMPLETED and row.endpoint == Endpoint.RESPONSES and stored:
        obj = copy.deepcopy(stored)
    else:
        obj = {
            "output": [],
            "usage": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "temperature": body.get("temperature"),
            "top_p": body.get("top_p"),
            "text": body.get("text", {"format": {"type": "text"}}),
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools", []),
            "incomplete_details": None,
        }
        if row.status == Status.COMPLETED and row.endpoint == Endpoint.CHAT:
            obj["output"] = _output_from_chat(stored)
    obj.update(
        id=row.id,
        object="response",
        created_at=_ts(row.created_at),
        model=body.get("model"),
        status=_status(row, obj),
        background=row.background,
        service_tier=row.service_tier,
        error=response_error(row),
        metadata=body.get("metadata") or {},
    )
    restore_previous(obj, body)
    if obj.get("usage") is None:
        obj["usage"] = usage = usage_object(row)
        if usage is not None:
            usage["input_tokens_details"]["cache_write_tokens"] = 0  # a Response's usage has it
    if row.status == Status.COMPLETED:
        obj["completed_at"] = _ts(row.finished_at)
    return obj


def _status(row: RequestView, obj: dict[str, Any]) -> str:
    # A stream that ended with ``response.incomplete`` is a finished row holding that object.
    if row.status == Status.COMPLETED and obj.get("status") == "incomplete":
        return "incomplete"
    return RESPONSE_STATUS[Status(row.status)]


def restore_previous(obj: dict[str, Any], request: dict[str, Any]) -> None:
    """Put the request's ``previous_response_id`` back on a Response: tiergate resolved it
    into the input at acceptance, so the upstream never saw it."""
    previous = request.get("previous_response_id")
    if previous is not None:
        obj["previous_response_id"] = previous


def stored_result(row: RequestView) -> dict[str, Any]:
    """The upstream body of a completed request, stamped with our id and the tier used."""
    body: dict[str, Any] = copy.deepcopy(row.response_body)
    if isinstance(body, dict) and row.endpoint != Endpoint.EMBEDDINGS:
        body["id"] = row.id
        body["service_tier"] = row.service_tier
        if row.endpoint == Endpoint.RESPONSES:
            restore_previous(body, row.body or {})
    return body


def deleted_object(request_id: str) -> dict[str, Any]:
    return {"id": request_id, "object": "response", "deleted": True}


def file_object(row: FileView) -> dict[str, Any]:
    """The OpenAI FileObject."""
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": _ts(row.created_at),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": row.status,
        "expires_at": _ts(row.expires_at),
        "status_details": None,
    }


def list_object(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """An OpenAI cursor page (``after`` = ``last_id``)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def batch_object(row: BatchView) -> dict[str, Any]:
    """The OpenAI Batch object; counts are live while the batch runs."""
    return {
        "id": row.id,
        "object": "batch",
        "endpoint": row.endpoint,
        "model": row.model,
        "errors": row.errors,
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": row.status,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        "created_at": _ts(row.created_at),
        "in_progress_at": _ts(row.in_progress_at),
        "expires_at": _ts(row.expires_at),
        "finalizing_at": _ts(row.finalizing_at),
        "completed_at": _ts(row.completed_at),
        "failed_at": _ts(row.failed_at),
        "expired_at": _ts(row.expired_at),
        "cancelling_at": _ts(row.cancelling_at),
        "cancelled_at": _ts(row.cancelled_at),
        "request_counts": {
            "total": row.total,
            "completed": int(row.completed or 0),
            "failed": int(row.failed or 0),
        },
        "metadata": row.metadata,
        "usage": usage_object(row),
    }


def result_line(row: ResultLineView) -> tuple[bool, str]:
    """One JSONL line of a batch's output (True) or error (False) file.

    ``row.response_body`` is the stored body as JSON text: it is spliced in as it is.
    """
    head = f'{{"id":{json.dumps(row.id)},"custom_id":{json.dumps(row.custom_id)},'
    if row.status == Status.COMPLETED or row.response_status is not None:
        response = (
            f'{{"status_code":{row.response_status},"request_id":{json.dumps(row.id)},'
            f'"body":{row.response_body or "null"}}}'
        )
        return row.status == Status.COMPLETED, f'{head}"response":{response},"error":null}}\n'
    error = row.error or {"code": ResponseErrorCode.SERVER_ERROR, "message": "The line failed."}
    detail = json.dumps({"code": error.get("code"), "message": error.get("message")})
    return False, f'{head}"response":null,"error":{detail}}}\n'
