"""Path and query parameters shared by the routes, validated before any query."""

from __future__ import annotations

from starlette.requests import Request

from app.gateway.services import Services
from app.ids import plausible_id
from app.openai.errors import bad_request, not_found

MAX_LIMIT_DIGITS = 6


def path_id(request: Request, what: str) -> str:
    """The ``{id}`` of the path; a value that cannot be an id of ours is a plain 404."""
    ident: str = request.path_params["id"]
    if not plausible_id(ident):
        raise not_found(what, ident)
    return ident


def page_params(request: Request, *, default: int, maximum: int) -> tuple[str | None, int]:
    """``after`` and ``limit`` of a list call, validated."""
    raw = request.query_params.get("limit", str(default))
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_LIMIT_DIGITS) or not (
        1 <= int(raw) <= maximum
    ):
        raise bad_request(f"'limit' must be an integer from 1 to {maximum}.", param="limit")
    after = request.query_params.get("after") or None
    if after is not None and not plausible_id(after):
        raise bad_request("'after' must be the id of an object of a previous page.", param="after")
    return after, int(raw)


def services(request: Request) -> Services:
    """The gateway's services (stores, settings), set on the app at start-up."""
    found: Services = request.app.state.services
    return found
