"""An upstream's error answer in OpenAI's shape, whatever shape it came in.

Model servers do not all answer errors as ``{"error": {"message", "type", "param",
"code"}}``: llama-cpp-python's server says ``{"detail": "Not Found"}``, FastAPI apps
``{"detail": [{"loc", "msg", ...}]}``, older vLLM puts ``message`` at the top, TGI
``{"error": "..."}``, and a proxy in front of any of them may answer plain text or an HTML
page. Clients (the SDK) read ``error.message``: the upstream's own text goes there.
"""

from __future__ import annotations

import html
import json
import re
from http import HTTPStatus
from typing import Any

# The most of an upstream's text a message keeps.
MAX_MESSAGE_CHARS = 1000
# An HTML page's head (its title repeats the body's heading), scripts and styles are not text.
_INVISIBLE = re.compile(r"<(head|script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def error_type(status: int) -> str:
    """The OpenAI error ``type`` for an HTTP status."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def normalize_error(status: int, content: bytes, content_type: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` for an upstream's error answer.

    An answer already in OpenAI's shape keeps its fields (missing ones are filled in); any
    other gives its text as the message (tags stripped from HTML) and a type by status.
    """
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return _body(status, _text(content, content_type))
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        message = detail.get("message")
        return _body(
            status,
            message if isinstance(message, str) else _compact(detail),
            type=detail.get("type"),
            param=detail.get("param"),
            code=detail.get("code"),
        )
    if isinstance(detail, str):  # {"error": "..."}
        return _body(status, detail)
    if isinstance(body, dict) and "detail" in body:  # FastAPI (llama-cpp-python's server)
        return _body(status, _fastapi_detail(body["detail"]))
    if isinstance(body, dict) and isinstance(body.get("message"), str):  # older vLLM
        return _body(status, body["message"], type=body.get("type"), code=body.get("code"))
    return _body(status, body if isinstance(body, str) else _compact(body))


def _body(
    status: int, message: str, *, type: Any = None, param: Any = None, code: Any = None
) -> dict[str, Any]:
    message = _SPACE.sub(" ", message).strip()[:MAX_MESSAGE_CHARS]
    if not message:
        message = f"The upstream answered HTTP {status} {_phrase(status)}".rstrip() + "."
    return {
        "error": {
            "message": message,
            "type": type if isinstance(type, str) and type else error_type(status),
            "param": param if isinstance(param, str) else None,
            "code": code if isinstance(code, str) else None,
        }
    }


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _text(content: bytes, content_type: str | None) -> str:
    text = content[: MAX_MESSAGE_CHARS * 20].decode("utf-8", errors="replace")
    if "html" in (content_type or "").lower() or text.lstrip().startswith("<"):
        text = html.unescape(_TAG.sub(" ", _INVISIBLE.sub(" ", text)))
    return text


def _fastapi_detail(detail: Any) -> str:
    """FastAPI's ``detail``: a string, or validation errors ``[{"loc", "msg"}, ...]``."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and all(isinstance(d, dict) and "msg" in d for d in detail):
        parts = []
        for item in detail:
            loc = item.get("loc")
            where = ".".join(str(p) for p in loc) if isinstance(loc, list) else ""
            parts.append(f"{where}: {item['msg']}" if where else str(item["msg"]))
        return "; ".join(parts)
    return _compact(detail)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
