"""bench/semantic_cache.py's calibration: a threshold is never scored on the pairs it was
chosen on, never recommended below the floor, and the report names the model's own size."""

from __future__ import annotations

from bench.semantic_cache import (
    FLOOR,
    Held,
    Pair,
    choose,
    cross_validate,
    folds,
    load_pairs,
    score,
)
from tests.support.paths import ROOT


def pair(same: bool, similarity: float, kind: str = "k", reason: str | None = None) -> Pair:
    return Pair("a", "b", same, kind, similarity, reason)


def test_folds_are_disjoint_stratified_and_cover_every_pair() -> None:
    pairs = load_pairs(ROOT / "bench" / "cache_pairs.jsonl")
    split = folds(pairs, 5, seed=3)
    assert sorted(id(p) for f in split for p in f) == sorted(id(p) for p in pairs)
    for fold in split:
        for label in (True, False):
            share = sum(p.same is label for p in fold) / sum(p.same is label for p in pairs)
            assert 0.15 <= share <= 0.25
    assert folds(pairs, 5, seed=3) == split and folds(pairs, 5, seed=4) != split


def test_the_threshold_is_never_below_the_floor() -> None:
    # In-sample, 0.81 would serve every positive and no negative: the floor wins anyway.
    positives = [pair(True, 0.81) for _ in range(10)] + [pair(True, 0.90) for _ in range(5)]
    pairs = positives + [pair(False, 0.5) for _ in range(10)]
    assert FLOOR == 0.85
    assert choose(pairs, FLOOR) == 0.90  # the highest threshold that keeps the 5 above it
    assert choose(pairs, 0.80) == 0.81


def test_of_equal_thresholds_the_highest_and_at_most_one_percent_false() -> None:
    negatives = [pair(False, 0.90)] + [pair(False, 0.5) for _ in range(99)]
    positives = [pair(True, 0.95) for _ in range(10)] + [pair(True, 0.89) for _ in range(5)]
    assert choose(positives + negatives, FLOOR) == 0.89  # 1 false hit of 100 is allowed
    negatives.append(pair(False, 0.91))  # 2 of 101 at 0.89 or 0.90: too many
    assert choose(positives + negatives, FLOOR) == 0.95  # then the highest of equal ones
    refused = [pair(False, 0.99, reason="numbers differ") for _ in range(50)]
    assert choose(positives + negatives + refused, FLOOR) == 0.95  # the verifier's refusals


def test_cross_validation_scores_each_fold_at_a_threshold_chosen_without_it() -> None:
    pairs = load_pairs(ROOT / "bench" / "cache_pairs.jsonl")
    score(pairs, lambda texts: [[float(len(t) % 7 + 1), 1.0] for t in texts])
    held = cross_validate(pairs, 5, 2, FLOOR)
    assert held.positives == 2 * sum(p.same for p in pairs)
    assert held.negatives == 2 * sum(not p.same for p in pairs)
    assert held.hits <= held.positives and held.false_hits <= held.negatives


def test_held_counts_what_a_threshold_serves() -> None:
    held = Held()
    held.add(
        [pair(True, 0.9), pair(True, 0.8), pair(False, 0.95), pair(False, 0.99, reason="x")], 0.85
    )
    assert (held.hits, held.positives, held.false_hits, held.negatives) == (1, 2, 1, 2)


def test_the_report_names_the_dimension_the_model_returned() -> None:
    pairs = [Pair("What is HTTP/3?", "what is http/3", True, "case")]
    assert score(pairs, lambda texts: [[0.1] * 384 for _ in texts]) == 384
    assert pairs[0].similarity > 0.99 and pairs[0].reason is None
