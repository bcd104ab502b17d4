"""Anthropic's Message Batches API (``/v1/messages/batches``) as a provider Batch API.

Facts only, as :mod:`app.upstream.openai_batches`: what the provider said of a job and of each
of its lines, in OpenAI's words, so that the batch executor and its poller
(``worker/executors/``) treat both formats alike.

Requests: lines go inline in the create call (``requests: [{custom_id, params}]``; nothing is
uploaded). A chat completions body becomes Messages ``params`` by
:func:`~app.openai.anthropic_messages.messages_params` (sent to the deployment's model, the
body's ``model``); a Responses body is made a chat body first
(:func:`~app.openai.chat_request.chat_request`). A line that cannot be expressed is refused
with :class:`~app.upstream.batch_api.RefusedLines` before anything is sent (its row fails as a
direct call refused for the same reason would: 400, ``untranslatable_request``).

Custom ids: Anthropic's must match ``^[a-zA-Z0-9_-]{1,64}$``. Tiergate's row ids do (a short
prefix such as ``resp_``, ``chatcmpl-`` or ``batch_req_`` and 33 hex digits: at most 43
characters), so they are sent as they are. An id that did not fit would be sent as ``h-`` and
the first 40 hex digits of its SHA-256 (no tiergate id starts ``h-``), and read back by
looking the results' ids up among the job's lines (:func:`custom_id`).

Headers: the deployment's key as ``x-api-key`` (taken from the ``authorization: Bearer``
header the deployment builds, which is not sent), ``anthropic-version: 2023-06-01``.

States, in OpenAI's words (:data:`app.upstream.batch_api.ENDED`): ``processing_status``
``in_progress`` is ``in_progress``, ``canceling`` is ``cancelling``; ``ended`` is
``cancelled`` when a cancel was initiated (``cancel_initiated_at`` set), else ``expired`` when
any request expired (``request_counts.expired`` > 0: Anthropic expires the requests it did
not process within 24 hours), else ``completed``.

Results (:meth:`AnthropicBatches.answers`): ``succeeded`` is the Message made a chat
completion (:func:`~app.openai.anthropic_messages.chat_completion`), and for a Responses line
then a Response object (:func:`~app.openai.chat_answer.response_from_chat`), status 200;
``errored`` is an error answer in OpenAI's shape, its ``code`` the one
:func:`~app.openai.anthropic_messages.error_of` stores (``upstream_<status>``), its HTTP
status the one whose retry rule (``app/calls/policy.py``) agrees with what ``error_of`` says
of retrying (:func:`agreeing_status`); ``canceled`` and ``expired`` are lines never run
(an error without a status: the poller gives their rows back).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Collection, Iterator
from typing import Any

import httpx
import orjson

from app.openai.anthropic_messages import chat_completion, error_of, messages_params
from app.openai.chat_answer import response_from_chat
from app.openai.chat_request import Untranslatable, chat_request
from app.openai.upstream_errors import error_type
from app.upstream.batch_api import BadOutput, JobLine, JobState, LineAnswer, RefusedLines
from app.upstream.client import UpstreamClient, UpstreamError, error_from_status, untranslatable
from app.upstream.deployment import Deployment
from app.vocabulary import UPSTREAM_STATUS_PREFIX, Endpoint, ErrorCode

log = logging.getLogger("tiergate.anthropic_batches")

API_VERSION = "2023-06-01"
BATCHES = "/messages/batches"
# How far back :meth:`AnthropicBatches.find` pages through the provider's newest batches.
FIND_PAGES = 10
PAGE = 100
# find pages this far before the job's creation (the provider's clock may differ a little).
CLOCK_SLACK_S = 60.0
DOWNLOAD_TIMEOUT_S = 600.0
MAX_CUSTOM_ID = 64
_CUSTOM_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
HASHED_PREFIX = "h-"
# The statuses app/calls/policy.py tries again (its BY_STATUS; app.upstream cannot import it).
RETRIED_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
RETRY_STATUS = 503  # a retryable error whose own status policy would not retry (529)
FINAL_SERVER_STATUS = 501  # a final server error whose own status policy would retry (500)
_STATES = {"in_progress": "in_progress", "canceling": "cancelling"}
_COUNTS = ("processing", "succeeded", "errored", "canceled", "expired")


def custom_id(row_id: str) -> str:
    """The custom_id a row is sent as: its id when Anthropic takes it, else ``h-`` and 40
    hex digits of its SHA-256 (deterministic; read back through the job's lines)."""
    if 0 < len(row_id) <= MAX_CUSTOM_ID and set(row_id) <= _CUSTOM_ID_CHARS:
        return row_id
    return HASHED_PREFIX + hashlib.sha256(row_id.encode()).hexdigest()[:40]


def agreeing_status(status: int, retryable: bool) -> int:
    """An HTTP status for an ``errored`` result whose retry rule agrees with ``retryable``:
    its own when it does; else 503 for a retryable one (``overloaded_error``'s 529), 501 for
    a final one (an error type :mod:`app.openai.anthropic_messages` does not know, 500)."""
    if (status in RETRIED_STATUSES) == retryable:
        return status
    return RETRY_STATUS if retryable else FINAL_SERVER_STATUS


def _headers(deployment: Deployment) -> dict[str, str | None]:
    given = deployment.headers()
    out: dict[str, str | None] = {
        "authorization": None,
        "anthropic-version": given.get("anthropic-version", API_VERSION),
        "content-type": "application/json",
    }
    auth = given.get("authorization", "")
    if "x-api-key" not in given and auth[:7].lower() == "bearer ":
        out["x-api-key"] = auth[7:].strip()
    return out


def params(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    """A line's Messages ``params``. Raises ``Untranslatable``."""
    chat = chat_request(body) if endpoint == Endpoint.RESPONSES else body
    return messages_params(chat, model=str(body.get("model")))


class AnthropicBatches:
    """Message batches at a provider that speaks Anthropic's Message Batches API."""

    uploads = False

    def __init__(self, upstream: UpstreamClient) -> None:
        self.upstream = upstream

    async def _send(
        self, deployment: Deployment, method: str, path: str, **kwargs: Any
    ) -> httpx.Response:
        return await self.upstream.send(
            deployment, method, path, headers=_headers(deployment), **kwargs
        )

    async def upload(self, deployment: Deployment, name: str, lines: list[JobLine]) -> str:
        raise ValueError("Anthropic's Message Batches take their requests inline")

    async def create(
        self,
        deployment: Deployment,
        *,
        file_id: str | None,
        lines: list[JobLine],
        endpoint: str,
        tag: str,
        window: str,
    ) -> JobState:
        """Create the batch of ``lines``, sent inline (``tag`` and ``window`` have no place in
        Anthropic's API). Raises :class:`RefusedLines` before sending anything when a line
        cannot be expressed as a Message request."""
        requests: list[dict[str, Any]] = []
        refused: dict[str, UpstreamError] = {}
        for row_id, line_endpoint, body in lines:
            try:
                requests.append(
                    {"custom_id": custom_id(row_id), "params": params(line_endpoint, body)}
                )
            except Untranslatable as exc:
                refused[row_id] = untranslatable(exc)
        if refused:
            raise RefusedLines(refused)
        response = await self._send(deployment, "POST", BATCHES, json={"requests": requests})
        return _state(_object(response))

    async def find(
        self,
        deployment: Deployment,
        *,
        tag: str,
        since: dt.datetime,
        rows: int,
        exclude: Collection[str],
    ) -> JobState | None:
        """The batch tiergate created for ``tag``, recognized without metadata (Anthropic's
        batches have none): among the provider's batches (newest first, paged back to
        ``since`` less a minute), the one created at or after ``since`` with ``rows``
        requests in all whose id no other tiergate job holds (``exclude``).

        Two or more such batches: None, logged. Adopting the wrong one would finish this job's
        rows with another job's answers (and leave that one's rows without theirs), so
        ambiguity is settled the safe way: the caller submits the job again and the provider
        runs (and bills) its rows twice, once in a batch no tiergate job will read. That can
        only happen when two jobs of one deployment with the same number of rows were both
        created and not recorded (their processes died between the create and storing its
        id) within the same few minutes.
        """
        oldest = since - dt.timedelta(seconds=CLOCK_SLACK_S)
        found: list[dict[str, Any]] = []
        after: str | None = None
        for _ in range(FIND_PAGES):
            query: dict[str, Any] = {"limit": PAGE}
            if after is not None:
                query["after_id"] = after
            page = _object(await self._send(deployment, "GET", BATCHES, params=query))
            batches = page.get("data")
            if not isinstance(batches, list) or not batches:
                break
            reached = False
            for batch in batches:
                if not isinstance(batch, dict):
                    continue
                created = _time(batch.get("created_at"))
                if created is not None and created < oldest:
                    reached = True
                    continue
                if (
                    created is not None
                    and created >= since
                    and _total(batch) == rows
                    and batch.get("id") not in exclude
                ):
                    found.append(batch)
            last = page.get("last_id")
            if reached or not page.get("has_more") or not isinstance(last, str):
                break
            after = last
        if len(found) > 1:
            log.warning(
                "job %s: %d provider batches of %d requests since %s could be it (%s);"
                " none adopted",
                tag,
                len(found),
                rows,
                since.isoformat(),
                ", ".join(str(b.get("id")) for b in found),
            )
            return None
        return _state(found[0]) if found else None

    async def get(self, deployment: Deployment, job_id: str) -> JobState | None:
        """The batch's state; None when the provider does not know it (lost)."""
        response = await self._send(deployment, "GET", f"{BATCHES}/{job_id}")
        if response.status_code == 404:
            return None
        return _state(_object(response))

    async def cancel(self, deployment: Deployment, job_id: str) -> JobState | None:
        """Ask the provider to cancel the batch (what it already ran stays in its results)."""
        response = await self._send(deployment, "POST", f"{BATCHES}/{job_id}/cancel")
        if response.status_code == 404:
            return None
        return _state(_object(response))

    async def answers(
        self, deployment: Deployment, state: JobState, lines: dict[str, JobLine]
    ) -> list[LineAnswer]:
        """Every result of the ended batch, in the format of its line's endpoint (a line no
        longer in ``lines`` is passed on as a chat completion: the poller holds no row for
        it)."""
        response = await self._send(
            deployment, "GET", f"{BATCHES}/{state.id}/results", timeout_s=DOWNLOAD_TIMEOUT_S
        )
        if response.status_code >= 400:
            raise _error(response)
        by_custom_id = {custom_id(row_id): line for row_id, line in lines.items()}
        return list(_answers(response.content, by_custom_id, int(time.time())))


def _answers(content: bytes, lines: dict[str, JobLine], created: int) -> Iterator[LineAnswer]:
    for number, raw in enumerate(content.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadOutput(f"line {number} of a batch's results is not JSON") from None
        if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
            raise BadOutput(f"line {number} of a batch's results has no custom_id")
        result = item.get("result")
        if not isinstance(result, dict):
            raise BadOutput(f"line {number} of a batch's results has no result")
        line = lines.get(item["custom_id"])
        row_id = line[0] if line is not None else item["custom_id"]
        kind = result.get("type")
        if kind == "succeeded":
            message = result.get("message")
            if not isinstance(message, dict):
                raise BadOutput(f"line {number} of a batch's results: succeeded, no message")
            try:
                answer = _answer(message, line, created)
            except (AttributeError, TypeError, ValueError):
                raise BadOutput(f"line {number} of a batch's results: a bad message") from None
            yield LineAnswer(row_id, 200, answer)
        elif kind in ("errored", "canceled", "expired"):
            failure = error_of(result)
            if kind != "errored":
                error = {"code": failure["code"], "message": failure["message"]}
                yield LineAnswer(row_id, error=error)
                continue
            digits = failure["code"].removeprefix(UPSTREAM_STATUS_PREFIX)
            own = int(digits) if digits.isdigit() else 500
            body = {
                "error": {
                    "message": failure["message"],
                    "type": error_type(own),
                    "param": None,
                    "code": failure["code"],
                }
            }
            yield LineAnswer(row_id, agreeing_status(own, failure["retryable"]), body)
        else:
            raise BadOutput(f"line {number} of a batch's results has a result of type {kind!r}")


def _answer(message: dict[str, Any], line: JobLine | None, created: int) -> dict[str, Any]:
    """A succeeded Message as its line's endpoint answers."""
    body = line[2] if line is not None else {}
    model = body.get("model") or message.get("model")
    chat = chat_completion(message, model=str(model), created=created)
    if line is not None and line[1] == Endpoint.RESPONSES:
        return response_from_chat(body, chat)
    return chat


def _total(batch: dict[str, Any]) -> int | None:
    counts = batch.get("request_counts")
    if not isinstance(counts, dict):
        return None
    values = [counts.get(name) or 0 for name in _COUNTS]
    return sum(values) if all(isinstance(v, int) for v in values) else None


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        found = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return found if found.tzinfo is not None else found.replace(tzinfo=dt.UTC)


def _state(batch: dict[str, Any]) -> JobState:
    """A MessageBatch in OpenAI's words (see the module docstring)."""
    batch_id, processing = batch.get("id"), batch.get("processing_status")
    if not isinstance(batch_id, str) or not isinstance(processing, str):
        raise _bad("a message batch without id or processing_status")
    counts = batch.get("request_counts")
    counts = counts if isinstance(counts, dict) else {}
    reason = None
    if processing != "ended":
        status = _STATES.get(processing, processing)
    elif batch.get("cancel_initiated_at"):
        status = "cancelled"
    elif isinstance(counts.get("expired"), int) and counts["expired"] > 0:
        status = "expired"
        reason = f"{counts['expired']} requests expired before the provider processed them"
    else:
        status = "completed"
    return JobState(id=batch_id, status=status, error=reason)


def _object(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        raise _error(response)
    try:
        found = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise _bad("an answer that is not JSON") from None
    if not isinstance(found, dict):
        raise _bad("an answer that is not a JSON object")
    return found


def _error(response: httpx.Response) -> UpstreamError:
    return error_from_status(response.status_code, response.headers, response.content)


def _bad(what: str) -> UpstreamError:
    return UpstreamError(
        ErrorCode.UPSTREAM_BAD_RESPONSE, f"the provider's Message Batches API sent {what}"
    )
