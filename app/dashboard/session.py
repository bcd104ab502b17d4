"""Dashboard sign-in: a random session token in an HttpOnly, SameSite=Strict cookie.

The cookie never holds the API key: sign-in checks the key once and stores the sha256 of a
fresh random token in ``dashboard_sessions``; each page looks the token up (joined with
``api_keys``, so revoking the key or taking its admin right ends the session at once).
Sign-in and sign-out forms carry a double-submit token (a random value both in a
SameSite=Strict cookie and in a hidden field) and must come from the dashboard's own origin,
so another site can neither sign a browser in nor out.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from app.store.dashboard import DashboardStore

SESSION_COOKIE = "tiergate_session"
CSRF_COOKIE = "tiergate_csrf"
CSRF_FIELD = "csrf"
SESSION_TTL_S = 12 * 3600
PATH = "/dashboard"


@dataclass(frozen=True)
class Admin:
    """The signed-in admin key."""

    id: str
    name: str


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(
        name, path=PATH, httponly=True, samesite="strict", secure=_secure(request)
    )


def csrf_token(request: Request) -> str:
    """The browser's double-submit token (a new one when it has none, the same for the whole
    answer)."""
    state = request.scope.setdefault("state", {})
    if "csrf" not in state:
        state["csrf"] = request.cookies.get(CSRF_COOKIE) or new_token()
    token: str = state["csrf"]
    return token


def same_origin(request: Request) -> bool:
    """The form was posted by a page of this origin (a browser always sends Origin on POST)."""
    origin = request.headers.get("origin")
    host = request.headers.get("host")
    return origin is not None and host is not None and origin == f"{request.url.scheme}://{host}"


def csrf_ok(request: Request, submitted: str | None) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE)
    return (
        same_origin(request)
        and bool(cookie)
        and submitted is not None
        and hmac.compare_digest(cookie or "", submitted)
    )


async def current_admin(request: Request, store: DashboardStore) -> Admin | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    row = await store.session_key(token)
    return Admin(id=row.id, name=row.name) if row is not None else None
