"""How an upstream call ended, and its columns in the form bulk statements take."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from app.vocabulary import Status

# The outcomes of many attempts, one row each, guarded by status and by the attempt number
# (a late or rescued-from worker cannot overwrite anything). Its arrays: ``ids``,
# ``attempts`` and those of :func:`outcome_arrays`.
STORE_OUTCOMES = f"""
UPDATE requests AS r
SET status = u.status, response_status = u.response_status,
    response_body = CAST(u.response_body AS jsonb), error = CAST(u.error AS jsonb),
    input_tokens = u.input_tokens, output_tokens = u.output_tokens,
    total_tokens = u.total_tokens, deployment = COALESCE(u.deployment, r.deployment),
    finished_at = now()
FROM unnest(CAST(:ids AS text[]), CAST(:attempts AS int[]), CAST(:statuses AS text[]),
            CAST(:response_statuses AS int[]), CAST(:response_bodies AS text[]),
            CAST(:errors AS text[]), CAST(:input_tokens AS int[]),
            CAST(:output_tokens AS int[]), CAST(:total_tokens AS int[]),
            CAST(:deployments AS text[]))
     AS u(id, attempt, status, response_status, response_body, error, input_tokens,
          output_tokens, total_tokens, deployment)
WHERE r.id = u.id AND r.status = '{Status.IN_PROGRESS}' AND r.attempts = u.attempt
"""


@dataclass(frozen=True)
class Outcome:
    """How one upstream call ended, ready to be stored."""

    status: Status
    response_status: int | None = None
    response_body: Any = None
    error: dict[str, Any] | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    # The body as the upstream sent it, when known: bulk writes store it without re-encoding.
    response_text: str | None = None
    # The deployment that answered (``model/deployment`` when a fallback model did).
    deployment: str | None = None

    def params(self) -> dict[str, Any]:
        """Bind parameters of a one-row UPDATE (``status``, ``response_body``, ...)."""
        return {
            "status": str(self.status),
            "response_status": self.response_status,
            "response_body": self.response_body,
            "error": self.error,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "deployment": self.deployment,
        }


def dumps(obj: Any) -> str:
    """Compact JSON text, as rows store it."""
    return json.dumps(obj, separators=(",", ":"))


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
        "input_tokens": [o.input_tokens for o in outcomes],
        "output_tokens": [o.output_tokens for o in outcomes],
        "total_tokens": [o.total_tokens for o in outcomes],
        "deployments": [o.deployment for o in outcomes],
    }
