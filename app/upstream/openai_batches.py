"""A provider's OpenAI-format Batch API (``/v1/files`` and ``/v1/batches``): OpenAI's, or
another tiergate's.

Facts only, as the rest of ``app/upstream``: what the provider said of a job and of each of its
lines. What to do about them (finish a row, retry it, run it another way) is the batch
executor's (``worker/executors/batch.py``).

A job is tagged with tiergate's own id in its ``metadata`` (``tiergate_job``), so a worker
that died between creating a job and storing its id finds it again (:meth:`find`) instead of
submitting twice.

Lines go as they are (the provider judges them: its per-line errors come back in the error
file), so :class:`~app.upstream.batch_api.RefusedLines` is never raised here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterator
from typing import Any

import httpx
import orjson

from app import jsontext
from app.upstream.batch_api import BadOutput, JobLine, JobState, LineAnswer
from app.upstream.client import UpstreamClient, UpstreamError, error_from_status
from app.upstream.deployment import Deployment
from app.vocabulary import ErrorCode

TAG = "tiergate_job"
# How far back :meth:`OpenAIBatches.find` pages through the provider's newest jobs.
FIND_PAGES = 10
PAGE = 100
DOWNLOAD_TIMEOUT_S = 600.0


def line(item: JobLine) -> bytes:
    """One line of a job's input file."""
    custom_id, endpoint, body = item
    entry = {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body}
    return jsontext.dumpb(entry) + b"\n"


class OpenAIBatches:
    """Files and batches at a provider that speaks OpenAI's Batch API."""

    uploads = True

    def __init__(self, upstream: UpstreamClient) -> None:
        self.upstream = upstream

    async def upload(self, deployment: Deployment, name: str, lines: list[JobLine]) -> str:
        """Upload a job's input file; its id."""
        content = b"".join(line(item) for item in lines)
        response = await self.upstream.send(
            deployment,
            "POST",
            "/files",
            files={"file": (name, content, "application/jsonl")},
            data={"purpose": "batch"},
            timeout_s=DOWNLOAD_TIMEOUT_S,
        )
        file_id = _object(response).get("id")
        if not isinstance(file_id, str):
            raise _bad("an uploaded file without an id")
        return file_id

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
        """Create the job of an uploaded file, tagged with tiergate's id."""
        if file_id is None:
            raise ValueError("an OpenAI-format job needs its uploaded file")
        response = await self.upstream.send(
            deployment,
            "POST",
            "/batches",
            json={
                "input_file_id": file_id,
                "endpoint": endpoint,
                "completion_window": window,
                "metadata": {TAG: tag},
            },
        )
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
        """The job tagged ``tag`` (in its metadata), if the provider has one (newest first,
        back to ``since``)."""
        after: str | None = None
        oldest = since.timestamp() - 60
        for _ in range(FIND_PAGES):
            params: dict[str, Any] = {"limit": PAGE}
            if after is not None:
                params["after"] = after
            page = _object(await self.upstream.send(deployment, "GET", "/batches", params=params))
            jobs = page.get("data")
            if not isinstance(jobs, list) or not jobs:
                return None
            for job in jobs:
                if isinstance(job, dict) and (job.get("metadata") or {}).get(TAG) == tag:
                    return _state(job)
            last = jobs[-1] if isinstance(jobs[-1], dict) else {}
            created = last.get("created_at")
            if not page.get("has_more") or (isinstance(created, int) and created < oldest):
                return None
            after = last.get("id")
        return None

    async def get(self, deployment: Deployment, batch_id: str) -> JobState | None:
        """The job's state; None when the provider does not know it (lost)."""
        response = await self.upstream.send(deployment, "GET", f"/batches/{batch_id}")
        if response.status_code == 404:
            return None
        return _state(_object(response))

    async def cancel(self, deployment: Deployment, batch_id: str) -> JobState | None:
        """Ask the provider to cancel the job (what it already ran stays in its output)."""
        response = await self.upstream.send(deployment, "POST", f"/batches/{batch_id}/cancel")
        if response.status_code == 404:
            return None
        return _state(_object(response))

    async def answers(
        self, deployment: Deployment, state: JobState, lines: dict[str, JobLine]
    ) -> list[LineAnswer]:
        """Every line answer in the job's output and error files (in the format of the lines'
        endpoints already)."""
        found: list[LineAnswer] = []
        for file_id in (state.output_file_id, state.error_file_id):
            if file_id:
                response = await self.upstream.send(
                    deployment,
                    "GET",
                    f"/files/{file_id}/content",
                    timeout_s=DOWNLOAD_TIMEOUT_S,
                )
                if response.status_code >= 400:
                    raise _error(response)
                found.extend(_answers(response.content))
        return found


def _answers(content: bytes) -> Iterator[LineAnswer]:
    for number, raw in enumerate(content.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadOutput(f"line {number} of a result file is not JSON") from None
        if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
            raise BadOutput(f"line {number} of a result file has no custom_id")
        response, error = item.get("response"), item.get("error")
        if isinstance(response, dict) and isinstance(response.get("status_code"), int):
            yield LineAnswer(item["custom_id"], response["status_code"], response.get("body"))
        elif isinstance(error, dict):
            yield LineAnswer(item["custom_id"], error=_line_error(error))
        else:
            raise BadOutput(f"line {number} of a result file has neither response nor error")


def _line_error(error: dict[str, Any]) -> dict[str, Any]:
    return {
        "code": str(error.get("code") or ErrorCode.UPSTREAM_BAD_RESPONSE),
        "message": str(error.get("message") or "the provider gave no reason"),
    }


def _state(job: dict[str, Any]) -> JobState:
    if not isinstance(job.get("id"), str) or not isinstance(job.get("status"), str):
        raise _bad("a batch object without id or status")
    errors = (job.get("errors") or {}).get("data") if isinstance(job.get("errors"), dict) else None
    reason = None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        reason = f"{errors[0].get('code')}: {errors[0].get('message')}"
    return JobState(
        id=job["id"],
        status=job["status"],
        output_file_id=job.get("output_file_id"),
        error_file_id=job.get("error_file_id"),
        error=reason,
    )


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
    return UpstreamError(ErrorCode.UPSTREAM_BAD_RESPONSE, f"the provider's Batch API sent {what}")
