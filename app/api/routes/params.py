"""Path and query parameters shared by the routes, validated before any query."""

from __future__ import annotations

from typing import Literal

from starlette.datastructures import FormData
from starlette.requests import Request

from app.gateway.services import Services
from app.ids import plausible_id
from app.openai.errors import bad_request, not_found
from app.openai.validation import MAX_METADATA_PAIRS
from app.vocabulary import RequestErrorCode

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


ORDERS = ("asc", "desc")


def sort_order(
    request: Request, default: Literal["asc", "desc"] = "desc"
) -> Literal["asc", "desc"]:
    """``order`` of a list call: ``desc`` (newest first) or ``asc``; ``default`` if absent."""
    raw = request.query_params.get("order", default)  # empty is not absent: a 400
    if raw == "asc":
        return "asc"
    if raw == "desc":
        return "desc"
    raise bad_request(
        "'order' must be 'asc' or 'desc'.", param="order", code=RequestErrorCode.INVALID_VALUE
    )


# OpenAI accepts expiries from an hour to 30 days after the anchor.
MIN_EXPIRY_S = 3600
MAX_EXPIRY_S = 30 * 86400
MAX_EXPIRY_DIGITS = len(str(MAX_EXPIRY_S))


def expires_after(form: FormData) -> int | None:
    """Seconds until an upload expires, from ``expires_after[anchor]`` and
    ``expires_after[seconds]`` (the SDK's multipart encoding); None if not given."""
    anchor = form.get("expires_after[anchor]")
    seconds = form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise bad_request(
            "'expires_after[anchor]' must be 'created_at'.",
            param="expires_after.anchor",
            code=RequestErrorCode.INVALID_VALUE,
        )
    if not (
        isinstance(seconds, str)
        and seconds.isascii()
        and seconds.isdigit()
        and len(seconds) <= MAX_EXPIRY_DIGITS
        and MIN_EXPIRY_S <= int(seconds) <= MAX_EXPIRY_S
    ):
        raise bad_request(
            f"'expires_after[seconds]' must be an integer from {MIN_EXPIRY_S} to {MAX_EXPIRY_S}.",
            param="expires_after.seconds",
            code=RequestErrorCode.INVALID_VALUE,
        )
    return int(seconds)


MAX_QUERY_TEXT = 1024


def text_param(request: Request, name: str) -> str | None:
    """A free-text query parameter (a model name, say): None if absent or empty; a NUL or
    over ``MAX_QUERY_TEXT`` characters is a 400 (no column could hold it anyway)."""
    raw = request.query_params.get(name) or None
    if raw is not None and ("\x00" in raw or len(raw) > MAX_QUERY_TEXT):
        raise bad_request(
            f"'{name}' must be a string of at most {MAX_QUERY_TEXT} characters without NUL.",
            param=name,
            code=RequestErrorCode.INVALID_VALUE,
        )
    return raw


def metadata_filter(request: Request) -> dict[str, str]:
    """``metadata[key]=value`` pairs of a list call (the SDK's encoding of a ``metadata``
    dict), checked by OpenAI's metadata rules: at most 16 pairs, keys of at most 64
    characters, values of at most 512, each key once; anything else named ``metadata`` is a
    400."""
    pairs: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name != "metadata" and not name.startswith("metadata["):
            continue
        key = name.removeprefix("metadata[").removesuffix("]")
        if (
            name == "metadata"
            or not name.endswith("]")
            or len(key) > 64
            or len(value) > 512
            or "\x00" in key + value
            or key in pairs
        ):
            raise bad_request(
                "'metadata' filters are 'metadata[key]=value' pairs: keys of at most 64 "
                "characters, values of at most 512.",
                param="metadata",
                code=RequestErrorCode.INVALID_VALUE,
            )
        pairs[key] = value
    if len(pairs) > MAX_METADATA_PAIRS:
        raise bad_request(
            f"'metadata' filters at most {MAX_METADATA_PAIRS} pairs.",
            param="metadata",
            code=RequestErrorCode.INVALID_VALUE,
        )
    return pairs
