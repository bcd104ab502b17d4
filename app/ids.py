"""Identifiers clients see. Random, unguessable, prefixed like OpenAI's."""

from __future__ import annotations

import secrets

ENDPOINT_PREFIX = {
    "/v1/responses": "resp_",
    "/v1/chat/completions": "chatcmpl-",
    "/v1/embeddings": "embd_",
}


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def request_id(endpoint: str) -> str:
    """A new id for one request row; its prefix tells the endpoint."""
    return new_id(ENDPOINT_PREFIX[endpoint])


def new_api_key() -> str:
    return "tg-" + secrets.token_urlsafe(32)
