"""OpenAI-format errors: one exception type, one table from condition to HTTP status."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from app.vocabulary import RequestErrorCode

# Error messages quote at most this much of an id a client sent.
MAX_SHOWN_ID = 64


class APIError(Exception):
    """An error the client should see as ``{"error": {...}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, code=self.code, param=self.param)

    def response(self) -> Response:
        return json_response(self.body(), self.status, headers=self.headers)


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(content, separators=(",", ":")),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def not_found(what: str, ident: str) -> APIError:
    shown = ident if len(ident) <= MAX_SHOWN_ID else ident[:MAX_SHOWN_ID] + "..."
    return APIError(404, f"No {what} found with id '{shown}'.", code=RequestErrorCode.NOT_FOUND)


def unauthorized(message: str = "Incorrect API key provided.") -> APIError:
    return APIError(
        401, message, type="authentication_error", code=RequestErrorCode.INVALID_API_KEY
    )


def unavailable(message: str = "The database is unavailable; retry shortly.") -> APIError:
    return APIError(
        503,
        message,
        type="server_error",
        code=RequestErrorCode.SERVICE_UNAVAILABLE,
        headers={"retry-after": "1"},
    )
