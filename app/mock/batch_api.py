"""The mock provider's Batch APIs, in memory: OpenAI's Files and Batches, and Anthropic's
Message Batches (``message_batches.py``), so that a batch executor can be tested against them.

OpenAI (shapes of ``openai.types.FileObject`` and ``openai.types.Batch``):

* ``POST /v1/files`` (multipart ``file``, ``purpose``, optional ``expires_after[anchor]`` and
  ``expires_after[seconds]``), ``GET /v1/files`` (``purpose``, ``order``, ``after``,
  ``limit``), ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content`` (raw bytes),
  ``DELETE /v1/files/{id}``.
* ``POST /v1/batches`` (``input_file_id``, ``endpoint``: ``/v1/chat/completions``,
  ``/v1/responses`` or ``/v1/embeddings``; ``completion_window`` such as ``24h``;
  ``metadata``), ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``,
  ``GET /v1/batches`` (newest first; ``after``, ``limit`` 1-100, default 20).

Anthropic (shapes of ``anthropic.types.messages.MessageBatch`` and
``MessageBatchIndividualResponse``; ``x-api-key`` and ``anthropic-version`` are accepted as
sent): ``POST /v1/messages/batches`` (``requests: [{custom_id, params}]``),
``GET /v1/messages/batches/{id}``, ``POST /v1/messages/batches/{id}/cancel``,
``GET /v1/messages/batches/{id}/results`` (JSON lines, once ended; the batch's
``results_url`` points there), ``GET /v1/messages/batches`` (newest first; ``after_id``,
``before_id``, ``limit`` 1-1000, default 20).

How a job runs: ``validating`` (OpenAI only; a fifth of the turnaround, at most 100 ms), then
``in_progress``: its lines start one by one, evenly spaced over the rest of the turnaround
(the first at once), and ``request_counts`` grow as they are answered (Anthropic's counts stay
``processing`` until the end, as Anthropic's do); after the turnaround the job ends
``completed`` (Anthropic: ``ended``). Each line is answered in process by the mock's own reply
logic for its URL (an Anthropic request as a chat completion, its answer made a Message:
``echo: <last user text>``, cut to ``max_tokens`` words with ``stop_reason: max_tokens``), so
the ``mock:`` controls in a line's input text apply to that line (``mock:status=500 hi``
fails, ``mock:sleep_ms=..``, ``fail_times``, ``key`` ... work as in realtime calls). Lines are
counted in ``/_mock/stats`` as ``"BATCH <url>"`` (``"BATCH /v1/messages"`` for Anthropic's).

Results: an OpenAI line answered 2xx goes to the output file, one answered an HTTP error to
the error file, both as ``{"id": "batch_req_...", "custom_id", "response": {"status_code",
"request_id", "body"}, "error": null}``; lines never run (cancel, expiry) go to the error file
as ``{"response": null, "error": {"code": "batch_cancelled" | "batch_expired", "message"}}``.
Files exist only when they have lines (``output_file_id``/``error_file_id`` null otherwise).
``request_counts.failed`` counts lines that ran and failed, not the ones never run.
Anthropic's results: ``succeeded`` (a Message), ``errored`` (Anthropic's error object, its
``type`` from the status), ``canceled`` or ``expired``.

Controls of a job, read from the ``x-mock-behavior`` header of its create call:

* ``turnaround_ms=N``: how long the job takes (default 200 ms).
* ``job_fail=1``: OpenAI: the job stays ``validating`` for its turnaround, then ends
  ``failed`` with ``errors.data=[{code, message}]`` (code ``error_code=NAME``, else
  ``mock_job_failed``) and no files. Anthropic has no failed state: every request ends
  ``errored`` (``api_error``).
* ``job_expire=1``: the job ends ``expired`` (Anthropic: ``ended``) after its turnaround; only
  its first ``expire_after=K`` lines run (default 0), the rest are ``batch_expired`` lines of
  the error file (Anthropic: ``expired`` results).
* ``lose=1``: the create call answers, then the job is gone: GET answers 404 and the list
  lacks it.
* ``garbage=1``: the output file (Anthropic: the results) is not JSON lines.
* ``drop_lines=K``: the output file (results) lacks its last K lines.
* ``extra_lines=K``: K lines with unknown custom_ids (``mock-extra-<i>``) are added to it.
* ``jobs=K`` with ``key=NAME``: the job controls above hold for the first K jobs created with
  that key; later ones run normally (a provider that fails once, then recovers).
* ``fail_creates=K`` with ``key=NAME``: the first K create calls with that key answer 500
  (after an upload succeeded: a submission that stopped between its two steps).
* The request controls apply to any batch API call (files too): ``status=N`` answers N
  (an OpenAI error body; Anthropic's for ``/v1/messages/batches``), ``fail_times``,
  ``sleep_ms``, ``retry_after``, ``key`` (recorded, body null); so do ``POST /_mock/outage``,
  the server's ``--latency-ms`` and ``--fail-rate`` (``drop``, ``trickle_ms``, ``hold`` and
  ``linger`` are ignored there).

Content errors of an OpenAI input file do not fail the create call: the batch ends ``failed``
after validation with ``errors.data`` (codes ``empty_file``, ``invalid_json_line``,
``invalid_request``, ``duplicate_custom_id``, ``url_mismatch``, ``model_mismatch``,
``too_many_tasks``, with the 1-based ``line``). Cancel: ``cancelling`` at once, then
``cancelled`` (Anthropic: ``canceling``, then ``ended``) when the lines in flight are
answered; cancelling a cancelling or cancelled job answers it again, cancelling another
ended job is a 400. ``/_mock/stats`` counts every call: POSTs by path, other methods as
``"METHOD path"`` (``GET /v1/batches/batch_...`` is a poll, ``GET /v1/files/.../content`` a
download). ``POST /_mock/reset`` clears files and jobs.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from app.mock import message_batches
from app.mock.batch_jobs import (
    CANCELLED,
    EXPIRED,
    FAILED,
    VALIDATING,
    BatchStore,
    Job,
    Line,
    LineReply,
    StoredFile,
    cancel,
    gate,
    new_id,
    page,
    shaped_output,
    start,
    store_of,
    validate_s_for,
)
from app.mock.controls import Controls
from app.mock.payloads import dumps, error_body

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings")
MAX_LINES = 50_000
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data")
_WINDOW = re.compile(r"(\d{1,6})([smh])")
_WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600}
# Following OpenAI's batch guide (expiration) and the BatchRequestOutput schema of
# openai/openai-openapi: "error: for requests that failed with a non-HTTP error", with
# ``response: null``; the cancel message is the mock's own wording.
NOT_RUN = {
    EXPIRED: (
        "batch_expired",
        "This request could not be executed before the completion window expired.",
    ),
    CANCELLED: ("batch_cancelled", "This request was not executed as the batch was cancelled."),
}


def _error(status: int, message: str, retry_after: str | None = None) -> Response:
    headers = {"retry-after": retry_after} if retry_after is not None else None
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)


def _bad(message: str, param: str | None = None) -> Response:
    return JSONResponse(error_body(400, message, param), status_code=400)


def _not_found(kind: str, id: str) -> Response:
    return _error(404, f"No {kind} found with id '{id}'.")


def _stamp(at: float | None) -> int | None:
    return None if at is None else int(at)


# --- files ---


def file_object(f: StoredFile) -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "file",
        "bytes": len(f.content),
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "expires_at": f.expires_at,
        "status_details": None,
    }


def add_file(store: BatchStore, filename: str, purpose: str, content: bytes) -> StoredFile:
    stored = StoredFile(new_id("file-"), filename, purpose, content, int(time.time()))
    store.files[stored.id] = stored
    return stored


def _expiry(form: Any, created: int) -> int | None:
    seconds = form.get("expires_after[seconds]")
    if not isinstance(seconds, str) or not seconds.isdigit():
        return None
    return created + int(seconds)


async def _upload(request: Request) -> Response:
    _, refused = await gate(request, _error)
    if refused is not None:
        return refused
    form = await request.form()
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        return _bad("Missing required parameter: 'file'.", "file")
    if purpose not in FILE_PURPOSES:
        return _bad(f"'purpose' must be one of {FILE_PURPOSES}.", "purpose")
    stored = add_file(store_of(request), upload.filename or "upload", purpose, await upload.read())
    stored.expires_at = _expiry(form, stored.created_at)
    return JSONResponse(file_object(stored))


def _limit(request: Request, default: int, high: int) -> int | Response:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= high:
        return _bad(f"'limit' must be an integer in [1, {high}].", "limit")
    return int(raw)


def _listing(data: list[dict[str, Any]], has_more: bool) -> Response:
    first = data[0]["id"] if data else None
    last = data[-1]["id"] if data else None
    listing = {"object": "list", "data": data, "first_id": first, "last_id": last}
    return JSONResponse({**listing, "has_more": has_more})


async def _list_files(request: Request) -> Response:
    _, refused = await gate(request, _error)
    if refused is not None:
        return refused
    limit = _limit(request, 10_000, 10_000)
    if isinstance(limit, Response):
        return limit
    query = request.query_params
    files = list(store_of(request).files.values())
    if query.get("order", "desc") != "asc":
        files.reverse()
    if query.get("purpose"):
        files = [f for f in files if f.purpose == query["purpose"]]
    chosen, more = page(files, query.get("after"), None, limit)
    return _listing([file_object(f) for f in chosen], more)


async def _file(request: Request) -> Response | StoredFile:
    _, refused = await gate(request, _error)
    if refused is not None:
        return refused
    file_id = request.path_params["file_id"]
    found = store_of(request).files.get(file_id)
    return found if found is not None else _not_found("file", file_id)


async def _get_file(request: Request) -> Response:
    found = await _file(request)
    return found if isinstance(found, Response) else JSONResponse(file_object(found))


async def _file_content(request: Request) -> Response:
    found = await _file(request)
    if isinstance(found, Response):
        return found
    return Response(found.content, media_type="application/octet-stream")


async def _delete_file(request: Request) -> Response:
    found = await _file(request)
    if isinstance(found, Response):
        return found
    del store_of(request).files[found.id]
    return JSONResponse({"id": found.id, "object": "file", "deleted": True})


# --- reading an input file ---


def _line_error(
    code: str, message: str, line: int | None, param: str | None = None
) -> dict[str, Any]:
    return {"code": code, "message": message, "line": line, "param": param}


def _parse_line(number: int, text: str, endpoint: str) -> Line | dict[str, Any]:
    """A line of an input file, or the error that fails the batch."""
    try:
        item = json.loads(text)
    except ValueError:
        return _line_error("invalid_json_line", "This line is not parseable as valid JSON.", number)
    if not isinstance(item, dict):
        return _line_error("invalid_json_line", "A line must be a JSON object.", number)
    custom_id, url, body = item.get("custom_id"), item.get("url"), item.get("body")
    if not isinstance(custom_id, str) or not custom_id:
        return _line_error("invalid_request", "Missing 'custom_id'.", number, "custom_id")
    if not isinstance(body, dict):
        return _line_error("invalid_request", "Missing 'body'.", number, "body")
    if item.get("method", "POST") != "POST":
        return _line_error("invalid_request", "Only POST is supported.", number, "method")
    if url != endpoint:
        message = f"The line's url {url!r} does not match the batch endpoint {endpoint!r}."
        return _line_error("url_mismatch", message, number, "url")
    return Line(custom_id, endpoint, body)


def read_lines(content: bytes, endpoint: str) -> tuple[list[Line], list[dict[str, Any]]]:
    """The lines of an input file, and the errors that fail its batch (at most the first)."""
    texts = [t for t in content.decode("utf-8", errors="replace").splitlines() if t.strip()]
    if not texts:
        return [], [_line_error("empty_file", "The input file is empty.", None)]
    if len(texts) > MAX_LINES:
        message = f"The input file has {len(texts)} lines; the limit is {MAX_LINES}."
        return [], [_line_error("too_many_tasks", message, None)]
    lines: list[Line] = []
    seen: set[str] = set()
    models: set[str] = set()
    for number, text in enumerate(texts, start=1):
        parsed = _parse_line(number, text, endpoint)
        if isinstance(parsed, dict):
            return [], [parsed]
        if parsed.custom_id in seen:
            message = f"The custom_id {parsed.custom_id!r} is used by another line."
            return [], [_line_error("duplicate_custom_id", message, number, "custom_id")]
        models.add(str(parsed.body.get("model")))
        if len(models) > 1:
            message = "Every line of a batch must use the same model."
            return [], [_line_error("model_mismatch", message, number, "body.model")]
        seen.add(parsed.custom_id)
        lines.append(parsed)
    return lines, []


# --- batches ---


def _window_s(window: Any) -> int | None:
    match = _WINDOW.fullmatch(window) if isinstance(window, str) else None
    return None if match is None else int(match[1]) * _WINDOW_UNITS[match[2]]


def _metadata_error(metadata: Any) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > 16:
        return "'metadata' must be an object of at most 16 pairs."
    for key, value in metadata.items():
        if len(key) > 64 or not isinstance(value, str) or len(value) > 512:
            return "'metadata' keys are at most 64 characters, values strings of at most 512."
    return None


def _create_error(store: BatchStore, body: dict[str, Any]) -> Response | None:
    file_id = body.get("input_file_id")
    stored = store.files.get(file_id) if isinstance(file_id, str) else None
    if stored is None:
        return _bad(f"The input file {file_id!r} was not found.", "input_file_id")
    if stored.purpose != "batch":
        return _bad("The input file must be uploaded with purpose 'batch'.", "input_file_id")
    if body.get("endpoint") not in BATCH_ENDPOINTS:
        return _bad(f"'endpoint' must be one of {BATCH_ENDPOINTS}.", "endpoint")
    if _window_s(body.get("completion_window")) is None:
        return _bad("'completion_window' must be such as '24h'.", "completion_window")
    problem = _metadata_error(body.get("metadata"))
    return None if problem is None else _bad(problem, "metadata")


def _line_runner(store: BatchStore) -> Callable[[Line], Awaitable[LineReply]]:
    async def run(line: Line) -> LineReply:
        body = {k: v for k, v in line.body.items() if k != "stream"}  # a batch does not stream
        return await store.answer(f"BATCH {line.url}", line.url, dumps(body).encode())

    return run


async def _json_body(request: Request) -> dict[str, Any] | None:
    try:
        body = json.loads(await request.body())
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def _create_batch(request: Request) -> Response:
    controls, refused = await gate(request, _error)
    if refused is not None:
        return refused
    if store_of(request).refuses_create(controls):
        return _error(500, "The mock refused this create (fail_creates).", None)
    controls = store_of(request).job_controls(controls)
    body = await _json_body(request)
    if body is None:
        return _bad("The request body must be a JSON object.")
    store = store_of(request)
    problem = _create_error(store, body)
    if problem is not None:
        return problem
    job = _new_batch(store, body, controls)
    if not controls.lose:
        store.batches[job.id] = job
        start(job, lambda ended, status: _write_files(store, ended, status))
    return JSONResponse(batch_object(job))


def _new_batch(store: BatchStore, body: dict[str, Any], controls: Controls) -> Job:
    endpoint = body["endpoint"]
    lines, errors = read_lines(store.files[body["input_file_id"]].content, endpoint)
    if controls.job_fail:
        code = controls.error_code or "mock_job_failed"
        errors = [_line_error(code, "The batch failed (mock job_fail=1).", None)]
    return Job(
        id=new_id("batch_"),
        lines=lines,
        controls=controls,
        run_line=_line_runner(store),
        validate_s=validate_s_for(controls),
        errors=errors,
        endpoint=endpoint,
        input_file_id=body["input_file_id"],
        completion_window=body["completion_window"],
        metadata=body.get("metadata"),
    )


def _output_line(custom_id: str, response: dict[str, Any] | None, error: Any = None) -> bytes:
    line = {"id": new_id("batch_req_"), "custom_id": custom_id, "response": response}
    return dumps({**line, "error": error}).encode()


def _answered(custom_id: str, reply: LineReply) -> bytes:
    response = {"status_code": reply.status, "request_id": new_id("req_"), "body": reply.body}
    return _output_line(custom_id, response)


def _extra_line(job: Job) -> Callable[[int], bytes]:
    model = str(job.lines[0].body.get("model")) if job.lines else "mock"

    def extra(index: int) -> bytes:
        body = {"object": "mock.extra", "model": model, "echo": "unknown line"}
        return _answered(f"mock-extra-{index}", LineReply(200, body))

    return extra


def _write_files(store: BatchStore, job: Job, ending: str) -> None:
    """The output and error files of a job ending so (none for a failed one)."""
    if ending == FAILED:
        return
    outputs: list[bytes] = []
    failures: list[bytes] = []
    for index, line in enumerate(job.lines):
        reply = job.replies.get(index)
        if reply is None:  # never run: the job is cancelled or expired
            code, message = NOT_RUN[ending]
            failures.append(_output_line(line.custom_id, None, {"code": code, "message": message}))
        else:
            (outputs if reply.ok else failures).append(_answered(line.custom_id, reply))
    name = job.id
    if outputs:
        content = shaped_output(outputs, job.controls, _extra_line(job))
        job.output_file_id = add_file(store, f"{name}_output.jsonl", "batch_output", content).id
    if failures:
        content = b"".join(line + b"\n" for line in failures)
        job.error_file_id = add_file(store, f"{name}_error.jsonl", "batch_output", content).id


def _usage(job: Job) -> dict[str, Any] | None:
    """Tokens of the answered lines (chat, Responses and embeddings usage)."""
    if not job.ended or job.errors:
        return None
    given = produced = 0
    for reply in job.replies.values():
        usage = reply.body.get("usage") if reply.ok and isinstance(reply.body, dict) else None
        if isinstance(usage, dict):
            given += int(usage.get("input_tokens", usage.get("prompt_tokens")) or 0)
            produced += int(usage.get("output_tokens", usage.get("completion_tokens")) or 0)
    return {
        "input_tokens": given,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": produced,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": given + produced,
    }


def batch_object(job: Job) -> dict[str, Any]:
    """The Batch object (``openai.types.Batch``) of ``job`` now."""
    ok, failed = job.counts()
    total = 0 if job.status in (VALIDATING, FAILED) else len(job.lines)
    window = _window_s(job.completion_window) or 86_400
    ended = _stamp(job.ended_at)
    return {
        "id": job.id,
        "object": "batch",
        "endpoint": job.endpoint,
        "model": str(job.lines[0].body.get("model")) if job.lines else None,
        "errors": {"object": "list", "data": job.errors} if job.errors else None,
        "input_file_id": job.input_file_id,
        "completion_window": job.completion_window,
        "status": job.status,
        "output_file_id": job.output_file_id,
        "error_file_id": job.error_file_id,
        "created_at": int(job.created),
        "in_progress_at": _stamp(job.in_progress_at),
        "expires_at": int(job.created) + window,
        "finalizing_at": _stamp(job.finalizing_at),
        "completed_at": ended if job.status == "completed" else None,
        "failed_at": ended if job.status == FAILED else None,
        "expired_at": ended if job.status == EXPIRED else None,
        "cancelling_at": _stamp(job.cancelling_at),
        "cancelled_at": ended if job.status == CANCELLED else None,
        "request_counts": {"total": total, "completed": ok, "failed": failed},
        "usage": _usage(job),
        "metadata": job.metadata,
    }


async def _batch(request: Request) -> Response | Job:
    _, refused = await gate(request, _error)
    if refused is not None:
        return refused
    batch_id = request.path_params["batch_id"]
    found = store_of(request).batches.get(batch_id)
    return found if found is not None else _not_found("batch", batch_id)


async def _get_batch(request: Request) -> Response:
    found = await _batch(request)
    return found if isinstance(found, Response) else JSONResponse(batch_object(found))


async def _cancel_batch(request: Request) -> Response:
    found = await _batch(request)
    if isinstance(found, Response):
        return found
    if found.ended and found.status != CANCELLED:
        return _bad(f"Cannot cancel a batch with status '{found.status}'.")
    cancel(found)
    return JSONResponse(batch_object(found))


async def _list_batches(request: Request) -> Response:
    _, refused = await gate(request, _error)
    if refused is not None:
        return refused
    limit = _limit(request, 20, 100)
    if isinstance(limit, Response):
        return limit
    newest_first = list(reversed(store_of(request).batches.values()))
    chosen, more = page(newest_first, request.query_params.get("after"), None, limit)
    return _listing([batch_object(job) for job in chosen], more)


def batch_routes() -> list[BaseRoute]:
    """The routes of both Batch APIs (mounted by ``app.mock.server``)."""
    return [
        Route("/v1/files", _upload, methods=["POST"]),
        Route("/v1/files", _list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", _get_file, methods=["GET"]),
        Route("/v1/files/{file_id}", _delete_file, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", _file_content, methods=["GET"]),
        Route("/v1/batches", _create_batch, methods=["POST"]),
        Route("/v1/batches", _list_batches, methods=["GET"]),
        Route("/v1/batches/{batch_id}", _get_batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", _cancel_batch, methods=["POST"]),
        *message_batches.routes(),
    ]
