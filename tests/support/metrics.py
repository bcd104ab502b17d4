"""Reading a tiergate process's /metrics in tests."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

DEFERRED = "tiergate_deferred_outcomes"
# (model, tier, status, code, executor) of tiergate_deferred_outcomes_total.
OutcomeLabels = tuple[str, str, str, str, str]


def deferred_outcomes(url: str) -> dict[OutcomeLabels, float]:
    """The samples of tiergate_deferred_outcomes_total scraped from ``url`` (a /metrics)."""
    text = httpx.get(url, timeout=10).text
    found: dict[OutcomeLabels, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != DEFERRED:
            continue
        for sample in family.samples:
            if sample.name == f"{DEFERRED}_total":
                labels = sample.labels
                key = (
                    labels["model"],
                    labels["tier"],
                    labels["status"],
                    labels["code"],
                    labels["executor"],
                )
                found[key] = sample.value
    return found
