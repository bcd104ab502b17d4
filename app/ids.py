"""Identifiers clients see: unguessable, prefixed like OpenAI's, ordered by time."""

from __future__ import annotations

import re
import secrets
import time

from app.vocabulary import Endpoint

ENDPOINT_PREFIX: dict[str, str] = {
    Endpoint.RESPONSES: "resp_",
    Endpoint.CHAT: "chatcmpl-",
    Endpoint.EMBEDDINGS: "embd_",
}


# Every id tiergate hands out is a short ASCII prefix and hex digits.
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")


def plausible_id(value: str) -> bool:
    """Whether ``value`` could be an id tiergate made. Anything else (quotes, NUL, unicode,
    very long strings) cannot name an object, so it is answered without a query."""
    return ID_PATTERN.fullmatch(value) is not None


def new_id(prefix: str) -> str:
    """``prefix``, the time in microseconds (13 hex digits), then 80 random bits.

    Still unguessable, but ids made later sort later: a new row's primary-key entry lands at
    the right edge of the index, not on a random page of a table of millions of rows.
    """
    return f"{prefix}{time.time_ns() // 1000:013x}{secrets.token_hex(10)}"


def request_id(endpoint: str) -> str:
    """A new id for one request row; its prefix tells the endpoint."""
    return new_id(ENDPOINT_PREFIX[endpoint])


def new_api_key() -> str:
    return "tg-" + secrets.token_urlsafe(32)
