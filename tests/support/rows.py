"""Typed rows for unit tests: a claimed row as a worker gets it, with test defaults."""

from __future__ import annotations

import datetime as dt
from typing import Any

from app.store.requests import ClaimedRequest


def claimed(**fields: Any) -> ClaimedRequest:
    """A claimed flex row; ``fields`` override the defaults."""
    now = dt.datetime.now(dt.UTC)
    columns: dict[str, Any] = {
        "id": "resp_1",
        "endpoint": "/v1/responses",
        "model": "m",
        "body": {},
        "attempts": 1,
        "expires_at": now + dt.timedelta(hours=1),
        "expired": False,
        "deployment": None,
        "pinned_deployment": None,
        "service_tier": "flex",
        "background": False,
        "stream": False,
        "created_at": now,
        "owner_key_id": "key_1",
        "key_name": None,
        "rpm": None,
        "tpm": None,
        "cache": None,
        "cache_enabled": True,
    }
    return ClaimedRequest(**{**columns, **fields})
