"""What tiergate needs of a provider's Batch API, whatever its format (``openai_batches.py``,
``anthropic_batches.py``): the facts a job's poller reads, and the calls it makes.

A job is found again after a crash by :meth:`ProviderBatches.find`: by the tag in its
metadata where the provider keeps metadata (OpenAI's format), else by what can be known of it
(when it was created, how many requests it has, that no other tiergate job claims it).

A format that translates lines (Anthropic's: chat completions made Messages) may find some it
cannot express: it refuses them with :class:`RefusedLines` before anything is sent, and the
caller fails those rows and submits the rest (``worker/executors/batch.py``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

from app.upstream.client import UpstreamError
from app.upstream.deployment import Deployment

# A job's line: tiergate's row id (the custom_id), the endpoint, the body as the provider
# takes it (its model name, no gateway fields).
JobLine = tuple[str, str, dict[str, Any]]
# Provider job statuses after which nothing changes any more (OpenAI's words; other
# formats map theirs to these).
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
CANCELLING = frozenset({"cancelling", "cancelled"})


@dataclass(frozen=True)
class JobState:
    """What the provider says of one job."""

    id: str
    status: str  # the provider's own word
    output_file_id: str | None = None
    error_file_id: str | None = None
    error: str | None = None  # why the whole job failed, if it did

    @property
    def ended(self) -> bool:
        return self.status in ENDED


@dataclass(frozen=True)
class LineAnswer:
    """What the provider answered for one line: an HTTP status and body, or an error
    without one (``{"code", "message"}``: the job expired or was cancelled before the line
    ran)."""

    custom_id: str
    status: int | None = None
    body: Any = None
    error: dict[str, Any] | None = None


class BadOutput(Exception):
    """A result file that is not what the Batch API promises."""


class RefusedLines(Exception):
    """Lines of a job that the format cannot express, refused before anything was sent
    (nothing was uploaded or created); ``refused``: custom_id -> the final error to fail that
    line's row with (an :class:`UpstreamError` with status 400, its body in OpenAI's error
    shape and its ``code`` the stored code: ``untranslatable_request``, as a direct call
    refused for the same reason). At least one line, maybe every one."""

    def __init__(self, refused: dict[str, UpstreamError]) -> None:
        super().__init__(f"{len(refused)} lines refused: " + ", ".join(sorted(refused)[:5]))
        self.refused = refused


class ProviderBatches(Protocol):
    """A provider's Batch API, one format.

    Lines the format cannot express: :meth:`upload` (formats that upload) or :meth:`create`
    (formats that send lines inline) raises :class:`RefusedLines` naming them before it sends
    anything; the caller then fails those rows with the errors given (final: the same body
    would be refused again) and calls again with the other lines only. A job whose every line
    is refused is not created at all (the caller fails every row and ends the job). An
    OpenAI-format provider never raises it: lines go as they are, and the provider's own
    per-line errors come back in its error file.
    """

    # Whether a job's lines are uploaded as a file first (its id stored before the create).
    uploads: bool

    async def upload(self, deployment: Deployment, name: str, lines: list[JobLine]) -> str:
        """Upload the lines as the job's input file; the file's id. Raises
        :class:`RefusedLines` (nothing sent) for lines the format cannot express."""
        ...

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
        """Create the job (of the uploaded file, or of ``lines`` sent inline). Raises
        :class:`RefusedLines` (nothing sent) for lines the format cannot express."""
        ...

    async def find(
        self,
        deployment: Deployment,
        *,
        tag: str,
        since: dt.datetime,
        rows: int,
        exclude: Collection[str],
    ) -> JobState | None:
        """The job tiergate created as ``tag`` at or after ``since`` with ``rows`` lines, if
        the provider has it; ``exclude``: provider job ids other tiergate jobs hold."""
        ...

    async def get(self, deployment: Deployment, job_id: str) -> JobState | None:
        """The job's state; None when the provider does not know it (lost)."""
        ...

    async def cancel(self, deployment: Deployment, job_id: str) -> JobState | None:
        """Cancel the job (what it already ran stays in its results)."""
        ...

    async def answers(
        self, deployment: Deployment, state: JobState, lines: dict[str, JobLine]
    ) -> list[LineAnswer]:
        """Every line's answer, in the format of its endpoint (a chat completion or a
        Response); ``lines`` are the job's lines still live, by custom_id."""
        ...
