"""How deferred rows end, counted for /metrics: ``tiergate_deferred_outcomes_total``.

A row is counted by the worker process that wrote its final status, once the guarded write
took (a row cancelled or rescued meanwhile is counted by nobody twice): the flex dispatcher,
a batch's run job, the poller of providers' Batch API jobs and the maintenance sweeps. Rows
that end together are counted with one increment per label set; nothing here touches the
database.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from app.metrics import Metrics, OutcomeLabels, outcome_code, outcome_executor
from app.store.outcomes import Outcome
from app.store.upstream_jobs import Finished
from app.vocabulary import CallClass, ExecutorKind

BATCH = ExecutorKind.BATCH


def tier_of(*, line: bool, background: bool) -> CallClass:
    """The ``tier`` label of a deferred row: a Batch API line, a background request or a
    (blocking) flex one."""
    if line:
        return CallClass.BATCH
    return CallClass.BACKGROUND if background else CallClass.FLEX


def labels_of(model: str, tier: str, outcome: Outcome, path: str | None = None) -> OutcomeLabels:
    """The labels of a row that ended with ``outcome`` (``path``: the executor its attempt
    was routed to, for an outcome that does not name one)."""
    status = str(outcome.status)
    code = outcome_code(status, outcome.error, outcome.response_status)
    return (model, str(tier), status, code, outcome_executor(outcome.executor, outcome.cache, path))


def count_ended(
    metrics: Metrics | None, model: str, tier: str, outcome: Outcome, path: str | None = None
) -> None:
    """Count one row that ended with ``outcome``."""
    if metrics is not None:
        metrics.count_deferred(labels_of(model, tier, outcome, path))


def count_many(metrics: Metrics | None, ended: Iterable[OutcomeLabels]) -> None:
    """Count rows that ended together: one increment per label set."""
    if metrics is None:
        return
    for labels, n in Counter(ended).items():
        metrics.count_deferred(labels, n)


def count_finished(
    metrics: Metrics | None, model: str, finished: Iterable[Finished], stored: set[str]
) -> None:
    """Count the rows of a provider's Batch API job whose results were stored."""
    count_many(
        metrics,
        (
            labels_of(model, tier_of(line=f.line, background=f.background), f.outcome, BATCH)
            for f in finished
            if f.id in stored
        ),
    )
