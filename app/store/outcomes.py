"""How an upstream call ended, and its columns in the form bulk statements take."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from app import jsontext
from app.store.rows import FromRow
from app.token_usage import NO_USAGE, TokenUsage
from app.vocabulary import Status, sql_call_class, sql_executor_path

# The usage columns an outcome sets, from the arrays of :func:`outcome_arrays` aliased ``u``.
SET_USAGE = """input_tokens = u.input_tokens, output_tokens = u.output_tokens,
    total_tokens = u.total_tokens, cached_tokens = u.cached_tokens,
    reasoning_tokens = u.reasoning_tokens, usage_estimated = u.usage_estimated,
    cost_usd = u.cost_usd"""

# The outcomes of many attempts, one row each, guarded by status and by the attempt number
# (a late or rescued-from worker cannot overwrite anything). Its arrays: ``ids``,
# ``attempts`` and those of :func:`stored_arrays`.
STORE_OUTCOMES = f"""
UPDATE requests AS r
SET status = u.status, response_status = u.response_status,
    response_body = CAST(u.response_body AS jsonb), error = CAST(u.error AS jsonb),
    {SET_USAGE}, deployment = COALESCE(u.deployment, r.deployment),
    cache = COALESCE(u.cache, r.cache), executor = COALESCE(u.executor, r.executor),
    finished_at = now()
FROM unnest(CAST(:ids AS text[]), CAST(:attempts AS int[]), CAST(:statuses AS text[]),
            CAST(:response_statuses AS int[]), CAST(:response_bodies AS text[]),
            CAST(:errors AS text[]), CAST(:input_tokens AS int[]),
            CAST(:output_tokens AS int[]), CAST(:total_tokens AS int[]),
            CAST(:cached_tokens AS int[]), CAST(:reasoning_tokens AS int[]),
            CAST(:usage_estimated AS boolean[]), CAST(:costs AS numeric[]),
            CAST(:deployments AS text[]), CAST(:caches AS text[]),
            CAST(:executors AS text[]))
     AS u(id, attempt, status, response_status, response_body, error, input_tokens,
          output_tokens, total_tokens, cached_tokens, reasoning_tokens, usage_estimated,
          cost_usd, deployment, cache, executor)
WHERE r.id = u.id AND r.status = '{Status.IN_PROGRESS}' AND r.attempts = u.attempt
"""


def ended_columns(r: str = "") -> str:
    """The columns of :class:`Ended` for one row a statement ends (its ``RETURNING``; ``r``:
    the table's alias and a dot)."""
    return (
        f"{r}id, {r}model, {sql_call_class(r)} AS tier,"
        f" {sql_executor_path(r)} AS executor, 1 AS rows"
    )


@dataclass(frozen=True, slots=True)
class Ended(FromRow):
    """Rows a sweep brought to a final status (``rows`` of them; one has its ``id``), by
    model, kind of call (``CallClass``) and the path they ran on (``sql_executor_path``):
    what the workers count in ``tiergate_deferred_outcomes``."""

    id: str | None
    model: str
    tier: str
    executor: str
    rows: int


@dataclass(frozen=True)
class Outcome:
    """How one upstream call ended, ready to be stored."""

    status: Status
    response_status: int | None = None
    response_body: Any = None
    error: dict[str, Any] | None = None
    usage: TokenUsage = NO_USAGE
    # USD, exact; None when unknown (no usage, or no price configured).
    cost_usd: Decimal | None = None
    # The body as the upstream sent it, when known: bulk writes store it without re-encoding.
    response_text: str | None = None
    # The deployment that answered (``model/deployment`` when a fallback model did).
    deployment: str | None = None
    # What the response cache did (None: the row keeps what it has).
    cache: str | None = None
    # The path a deferred call ran on (``ExecutorKind``; None: the row keeps what it has).
    executor: str | None = None

    def params(self) -> dict[str, Any]:
        """Bind parameters of a one-row UPDATE (``status``, ``response_body``, ...)."""
        return {
            "status": str(self.status),
            "response_status": self.response_status,
            "response_body": self.response_body,
            "error": self.error,
            "input_tokens": self.usage.input,
            "output_tokens": self.usage.output,
            "total_tokens": self.usage.total,
            "cached_tokens": self.usage.cached,
            "reasoning_tokens": self.usage.reasoning,
            "usage_estimated": self.usage.estimated,
            "cost_usd": self.cost_usd,
            "deployment": self.deployment,
            "cache": self.cache,
        }


def dumps(obj: Any) -> str:
    """Compact JSON text, as rows store it."""
    return jsontext.dumps(obj)


def _json_or_none(obj: Any) -> str | None:
    return None if obj is None else dumps(obj)


def outcome_arrays(outcomes: list[Outcome]) -> dict[str, list[Any]]:
    """Column arrays of many outcomes, for ``UPDATE ... FROM unnest(...)`` statements
    (in the order those statements list them)."""
    return {
        "statuses": [str(o.status) for o in outcomes],
        "response_statuses": [o.response_status for o in outcomes],
        "response_bodies": [o.response_text or _json_or_none(o.response_body) for o in outcomes],
        "errors": [_json_or_none(o.error) for o in outcomes],
        "input_tokens": [o.usage.input for o in outcomes],
        "output_tokens": [o.usage.output for o in outcomes],
        "total_tokens": [o.usage.total for o in outcomes],
        "cached_tokens": [o.usage.cached for o in outcomes],
        "reasoning_tokens": [o.usage.reasoning for o in outcomes],
        "usage_estimated": [o.usage.estimated for o in outcomes],
        "costs": [o.cost_usd for o in outcomes],
        "deployments": [o.deployment for o in outcomes],
        "caches": [o.cache for o in outcomes],
    }


def attempt_error(refund: str, error: str, deployment: str, row: str = "") -> str:
    """SQL for ``attempt_errors`` when an attempt is requeued: its error joins the row's
    history (``[{attempt, at, error, deployment}]``), unless it made no call (``refund``)."""
    return (
        f"CASE WHEN {refund} = 0 THEN coalesce({row}attempt_errors, '[]'::jsonb)"
        f" || jsonb_build_array(jsonb_build_object('attempt', {row}attempts, 'at', now(),"
        f" 'error', {error}, 'deployment', coalesce({deployment}, {row}deployment)))"
        f" ELSE {row}attempt_errors END"
    )


def stored_arrays(outcomes: list[Outcome]) -> dict[str, list[Any]]:
    """The arrays of :data:`STORE_OUTCOMES`: :func:`outcome_arrays` and the executors."""
    return {**outcome_arrays(outcomes), "executors": [o.executor for o in outcomes]}
