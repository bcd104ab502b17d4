"""Placeholder until the verifier lands: accepts only prompts equal once case and spacing are
normalised."""

from __future__ import annotations


def mismatch(new: str, cached: str) -> str | None:
    """None when ``cached`` may answer ``new``, else why not."""
    if " ".join(new.lower().split()) == " ".join(cached.lower().split()):
        return None
    return "different words"
