"""OpenAI's stored chat completions objects, from request rows: the ChatCompletion as listed,
retrieved and updated, its request's messages (``ChatCompletionStoreMessage``), the deleted
object. Pure functions."""

from __future__ import annotations

from typing import Any, Literal, Protocol

from app.openai.objects import RequestView, stored_result

# The content parts a stored message lists (``ChatCompletionStoreMessage.content_parts``).
LISTED_PARTS = ("text", "image_url")


class StoredChatView(RequestView, Protocol):
    """A chat completion's row, with the metadata the update route may have set."""

    @property
    def metadata(self) -> dict[str, str] | None: ...


def chat_completion_object(row: StoredChatView) -> dict[str, Any]:
    """The stored ChatCompletion: the answer as recorded (named as the client asked), with
    tiergate's id, the tier used and its metadata (set by an update, else the request's)."""
    obj = stored_result(row)
    obj.setdefault("object", "chat.completion")
    metadata = row.metadata if row.metadata is not None else (row.body or {}).get("metadata")
    obj["metadata"] = metadata or {}
    return obj


def message_id(completion_id: str, index: int) -> str:
    """A stored message's id, as OpenAI spells it: ``{completion id}-{index}``."""
    return f"{completion_id}-{index}"


def message_index(completion_id: str, ident: str, count: int) -> int | None:
    """The index of the message ``ident`` of a completion with ``count`` messages (None if
    it names none of them)."""
    prefix = completion_id + "-"
    digits = ident.removeprefix(prefix)
    if not ident.startswith(prefix) or not (digits.isascii() and digits.isdigit()):
        return None
    if len(digits) > len(str(count)) or int(digits) >= count:
        return None
    return int(digits)


def store_message(completion_id: str, index: int, message: Any) -> dict[str, Any]:
    """One request message as a ``ChatCompletionStoreMessage``: its fields as sent, ``content``
    a string (the text of its parts when it was an array of parts, which then stand in
    ``content_parts``), ``name`` and ``content_parts`` always present."""
    found: dict[str, Any] = dict(message) if isinstance(message, dict) else {}
    content = found.get("content")
    parts = None
    if isinstance(content, list):
        parts = [p for p in content if isinstance(p, dict) and p.get("type") in LISTED_PARTS]
        texts = [p.get("text") for p in parts if p.get("type") == "text"]
        content = "".join(t for t in texts if isinstance(t, str)) if texts else None
    return {
        **found,
        "id": message_id(completion_id, index),
        "role": found.get("role"),
        "content": content,
        "name": found.get("name"),
        "content_parts": parts,
    }


def stored_messages(
    completion_id: str,
    request: dict[str, Any],
    *,
    order: Literal["asc", "desc"],
    after: int | None,
    limit: int,
) -> tuple[list[dict[str, Any]], bool]:
    """A page of the request's messages in ``order`` after the message of index ``after``,
    and whether more follow."""
    found = request.get("messages")
    messages: list[Any] = found if isinstance(found, list) else []
    count = len(messages)
    if order == "asc":
        indexes = list(range(0 if after is None else after + 1, count))
    else:
        indexes = list(range((count if after is None else after) - 1, -1, -1))
    page = indexes[:limit]
    return [store_message(completion_id, i, messages[i]) for i in page], len(indexes) > limit


def deleted_chat_object(completion_id: str) -> dict[str, Any]:
    return {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}
