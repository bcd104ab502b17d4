"""The mock provider's Anthropic Message Batches API, in memory (documented with the OpenAI
Batch API in ``app/mock/batch_api.py``). Shapes follow the ``anthropic`` SDK's types:
``MessageBatch``, ``MessageBatchIndividualResponse``, ``Message`` and ``ErrorResponse``."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from app.mock.batch_jobs import (
    CANCELLED,
    CANCELLING,
    BatchStore,
    Job,
    Line,
    LineReply,
    cancel,
    gate,
    new_id,
    page,
    shaped_output,
    start,
    store_of,
)
from app.mock.controls import Controls
from app.mock.payloads import chat_text, dumps

MAX_REQUESTS = 100_000
CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
EXPIRES_AFTER_S = 24 * 3600
RESULTS_MEDIA_TYPE = "application/x-jsonl"
COUNTED_AS = "BATCH /v1/messages"  # how /_mock/stats counts a request of a batch
# An HTTP status as the ``type`` of Anthropic's error object (the SDK's ErrorObject union).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_object(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body: ``{"type": "error", "error": {"type", "message"}}``."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def _error(status: int, message: str, retry_after: str | None = None) -> Response:
    headers = {"retry-after": retry_after} if retry_after is not None else None
    body = {**error_object(status, message), "request_id": new_id("req_")}
    return JSONResponse(body, status_code=status, headers=headers)


def _rfc3339(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


# --- one request, answered as a chat completion made a Message ---


def _params_error(params: Any) -> str | None:
    if not isinstance(params, dict):
        return "params: Input should be an object"
    if not isinstance(params.get("model"), str) or not params["model"]:
        return "params.model: Field required"
    max_tokens = params.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        return "params.max_tokens: Field required (an integer >= 1)"
    if not isinstance(params.get("messages"), list) or not params["messages"]:
        return "params.messages: Field required"
    return None


def _message(params: dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
    """The Message for a chat completion ``reply``, cut to ``max_tokens`` words."""
    choices = reply.get("choices") or [{}]
    text = str((choices[0].get("message") or {}).get("content") or "")
    words = re.findall(r"\s*\S+", text) or [text]
    limit = params["max_tokens"]
    cut = len(words) > limit
    text = "".join(words[:limit]) if cut else text
    usage = {
        "input_tokens": max(1, len(chat_text(params).split())),
        "output_tokens": max(1, len(text.split())),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "service_tier": "batch",
    }
    return {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": params["model"],
        "content": [{"type": "text", "text": text, "citations": None}],
        "stop_reason": "max_tokens" if cut else "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


def _failure_message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message"))
    return body if isinstance(body, str) else dumps(body)


def _runner(store: BatchStore) -> Callable[[Line], Awaitable[LineReply]]:
    async def run(line: Line) -> LineReply:
        params = line.body
        problem = _params_error(params)
        if problem is not None:
            return LineReply(400, error_object(400, problem))
        chat = {"model": params["model"], "messages": params["messages"]}
        reply = await store.answer(COUNTED_AS, "/v1/chat/completions", dumps(chat).encode())
        if not reply.ok:
            return LineReply(reply.status, error_object(reply.status, _failure_message(reply.body)))
        return LineReply(200, _message(params, reply.body))

    return run


def _job_failed_runner(line: Line) -> Awaitable[LineReply]:
    async def failed() -> LineReply:
        return LineReply(500, error_object(500, "The request failed (mock job_fail=1)."))

    return failed()


# --- results ---


def _result(job: Job, index: int, ending: str) -> dict[str, Any]:
    reply = job.replies.get(index)
    if reply is None:
        return {"type": "canceled" if ending == CANCELLED else "expired"}
    if reply.ok:
        return {"type": "succeeded", "message": reply.body}
    return {"type": "errored", "error": reply.body}


def _results_line(custom_id: str, result: dict[str, Any]) -> bytes:
    return dumps({"custom_id": custom_id, "result": result}).encode()


def _extra(index: int) -> bytes:
    return _results_line(f"mock-extra-{index}", {"type": "expired"})


def _write_results(job: Job, ending: str) -> None:
    lines = [_results_line(ln.custom_id, _result(job, i, ending)) for i, ln in enumerate(job.lines)]
    job.results = shaped_output(lines, job.controls, _extra)


def _counts(job: Job) -> dict[str, int]:
    counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    if not job.ended:
        return {**counts, "processing": len(job.lines)}
    ending = job.status
    for index in range(len(job.lines)):
        kind = _result(job, index, ending)["type"]
        counts[kind] += 1
    return counts


def message_batch(job: Job, base_url: str) -> dict[str, Any]:
    """The MessageBatch object of ``job`` now; ``results_url`` under ``base_url``."""
    ended = job.ended
    results_url = f"{base_url}v1/messages/batches/{job.id}/results" if ended else None
    status = "ended" if ended else "canceling" if job.status == CANCELLING else "in_progress"
    return {
        "id": job.id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": _counts(job),
        "ended_at": _rfc3339(job.ended_at),
        "created_at": _rfc3339(job.created),
        "expires_at": _rfc3339(job.created + EXPIRES_AFTER_S),
        "archived_at": None,
        "cancel_initiated_at": _rfc3339(job.cancelling_at),
        "results_url": results_url,
    }


# --- routes ---


def _requests_error(requests: Any) -> str | None:
    if not isinstance(requests, list) or not requests:
        return "requests: Field required (a non-empty list)"
    if len(requests) > MAX_REQUESTS:
        return f"requests: at most {MAX_REQUESTS} requests"
    seen: set[str] = set()
    for i, item in enumerate(requests):
        custom_id = item.get("custom_id") if isinstance(item, dict) else None
        if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
            return f"requests.{i}.custom_id: a string matching ^[a-zA-Z0-9_-]{{1,64}}$"
        if custom_id in seen:
            return f"requests.{i}.custom_id: duplicate custom_id {custom_id!r}"
        seen.add(custom_id)
    return None


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError:
        return None


def _new_job(store: BatchStore, requests: list[dict[str, Any]], controls: Controls) -> Job:
    # A request's params are checked when it runs (an ``errored`` result), as Anthropic does.
    lines = [Line(r["custom_id"], "/v1/messages", r.get("params") or {}) for r in requests]
    run = _job_failed_runner if controls.job_fail else _runner(store)
    return Job(new_id("msgbatch_"), lines, controls, run, validate_s=0.0)


async def _create(request: Request) -> Response:
    controls, refused = await gate(request, _error)
    if refused is not None:
        return refused
    if store_of(request).refuses_create(controls):
        return _error(500, "The mock refused this create (fail_creates).", None)
    controls = store_of(request).job_controls(controls)
    body = await _json_body(request)
    requests = body.get("requests") if isinstance(body, dict) else None
    problem = _requests_error(requests)
    if problem is not None:
        return _error(400, problem)
    store = store_of(request)
    job = _new_job(store, requests or [], controls)
    if not controls.lose:
        store.message_batches[job.id] = job
        start(job, _write_results)
    return JSONResponse(message_batch(job, str(request.base_url)))


async def _found(request: Request) -> Response | Job:
    _, refused = await gate(request, _error)
    if refused is not None:
        return refused
    batch_id = request.path_params["batch_id"]
    job = store_of(request).message_batches.get(batch_id)
    return job if job is not None else _error(404, f"Message batch {batch_id!r} not found.")


async def _retrieve(request: Request) -> Response:
    job = await _found(request)
    if isinstance(job, Response):
        return job
    return JSONResponse(message_batch(job, str(request.base_url)))


async def _cancel(request: Request) -> Response:
    job = await _found(request)
    if isinstance(job, Response):
        return job
    if job.ended and job.status != CANCELLED:
        return _error(400, f"Message batch {job.id!r} has already ended and cannot be canceled.")
    cancel(job)
    return JSONResponse(message_batch(job, str(request.base_url)))


async def _results(request: Request) -> Response:
    job = await _found(request)
    if isinstance(job, Response):
        return job
    if job.results is None:
        return _error(400, f"Message batch {job.id!r} has not finished processing.")
    return Response(job.results, media_type=RESULTS_MEDIA_TYPE)


def _limit(request: Request) -> int | None:
    raw = request.query_params.get("limit", "20")
    return int(raw) if raw.isdigit() and 1 <= int(raw) <= 1000 else None


async def _list(request: Request) -> Response:
    _, refused = await gate(request, _error)
    if refused is not None:
        return refused
    limit = _limit(request)
    if limit is None:
        return _error(400, "limit: an integer in [1, 1000]")
    query = request.query_params
    newest_first = list(reversed(store_of(request).message_batches.values()))
    chosen, more = page(newest_first, query.get("after_id"), query.get("before_id"), limit)
    data = [message_batch(job, str(request.base_url)) for job in chosen]
    first = data[0]["id"] if data else None
    last = data[-1]["id"] if data else None
    return JSONResponse({"data": data, "has_more": more, "first_id": first, "last_id": last})


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/messages/batches", _create, methods=["POST"]),
        Route("/v1/messages/batches", _list, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}", _retrieve, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}/cancel", _cancel, methods=["POST"]),
        Route("/v1/messages/batches/{batch_id}/results", _results, methods=["GET"]),
    ]
