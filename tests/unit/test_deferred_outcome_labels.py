"""The labels of tiergate_deferred_outcomes stay few: codes from the vocabulary, statuses,
paths; an upstream's own words never become a label value."""

from __future__ import annotations

from app.metrics import Metrics, outcome_code, outcome_executor
from app.store.outcomes import Outcome
from app.vocabulary import ErrorCode, Status, error
from worker.outcomes import count_many, labels_of, tier_of

FAMILY = "tiergate_deferred_outcomes_total"


def test_codes_are_the_vocabulary_upstream_statuses_or_other():
    assert outcome_code("completed", None, 200) == ""
    assert outcome_code("expired", error(ErrorCode.REQUEST_EXPIRED), None) == "request_expired"
    # tiergate's own code wins over the status it came with
    assert outcome_code("failed", {"code": "untranslatable_request"}, 400) == (
        "untranslatable_request"
    )
    # an upstream's own code (free text) is replaced by its status
    assert outcome_code("failed", {"code": "model_exploded_42"}, 503) == "upstream_503"
    assert outcome_code("failed", {"code": "upstream_429", "message": "x"}, None) == "upstream_429"
    assert outcome_code("failed", {"code": "server_error"}, None) == "server_error"  # OpenAI's
    assert outcome_code("failed", {"code": "anything at all"}, None) == "other"
    assert outcome_code("failed", {"code": "upstream_12345"}, None) == "other"
    assert outcome_code("failed", None, 302) == "other"


def test_the_executor_is_the_path_a_cache_hit_or_none():
    assert outcome_executor("batch", None, "direct") == "batch"  # the outcome says
    assert outcome_executor(None, "hit", None) == "cache"
    assert outcome_executor(None, "miss", "flex") == "flex"  # a failed call on its path
    assert outcome_executor(None, None, None) == "none"  # no call was tried


def test_tiers_and_labels_of_an_outcome():
    assert tier_of(line=True, background=False) == "batch"
    assert tier_of(line=False, background=True) == "background"
    assert tier_of(line=False, background=False) == "flex"
    failed = Outcome(
        status=Status.FAILED, response_status=400, error={"code": "invalid_request_error"}
    )
    assert labels_of("m", "background", failed, "direct") == (
        "m",
        "background",
        "failed",
        "upstream_400",
        "direct",
    )


def test_rows_that_end_together_are_counted_per_label_set():
    metrics = Metrics()
    done = Outcome(status=Status.COMPLETED, executor="direct")
    expired = Outcome(status=Status.EXPIRED, error=error(ErrorCode.BATCH_EXPIRED))
    count_many(
        metrics,
        [labels_of("m", "batch", done)] * 3 + [labels_of("m", "batch", expired)] * 2,
    )
    count_many(None, [labels_of("m", "batch", done)])  # a worker without /metrics: nothing

    def value(status: str, code: str, executor: str) -> float | None:
        labels = {"model": "m", "tier": "batch", "status": status, "code": code}
        return metrics.registry.get_sample_value(FAMILY, {**labels, "executor": executor})

    assert value("completed", "", "direct") == 3
    assert value("expired", "batch_expired", "none") == 2
