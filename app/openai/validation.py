"""Parse and check an inference request body; decide its tier. No I/O; the one edit made
to a body is dropping chat's legacy function-calling fields set to null."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from app.jsontext import loadb
from app.keys import ApiKey
from app.openai.chat_request import LEGACY_CHAT_FIELDS, Untranslatable, chat_request, deprecated
from app.openai.errors import APIError, bad_request
from app.settings import ModelConfig, Settings
from app.vocabulary import Endpoint, Header, RequestErrorCode, Tier

INFERENCE_ENDPOINTS = tuple(str(endpoint) for endpoint in Endpoint)
REALTIME_TIERS = frozenset({"auto", "default", "priority", "scale"})
SERVICE_TIERS = REALTIME_TIERS | {"flex"}
MAX_METADATA_PAIRS = 16
# Deepest nesting of arrays and objects in a body (OpenAI's own schemas go a few levels deep).
MAX_JSON_DEPTH = 128
TOO_DEEP = f"The JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels)."


@dataclass(frozen=True)
class Call:
    """One classified inference call."""

    endpoint: str
    body: dict[str, Any]
    model: ModelConfig
    tier: str  # "default" (realtime) or "flex"
    background: bool
    stream: bool
    pin: str | None = None  # x-tiergate-deployment: the one deployment that may serve it
    key_name: str = ""  # the caller's key, as metrics name it
    key_id: str = ""
    # Tokens taken from the key's rate limit before the call (corrected after it).
    estimated_tokens: int = 0
    cache: str | None = None  # what the response cache did (a CacheResult), if the model has one

    @property
    def deferred(self) -> bool:
        """Runs on a worker (flex or background) rather than proxied in place."""
        return self.tier == Tier.FLEX or self.background


def parse_json(raw: bytes | bytearray) -> dict[str, Any]:
    """The body as a JSON object that PostgreSQL, the workers and any upstream can take."""
    if not raw.strip():
        raise bad_request("The request body is empty; expected a JSON object.")
    if b"\\u0000" in raw:
        # PostgreSQL's jsonb cannot hold NUL characters; say so instead of failing later.
        raise bad_request("The body contains a NUL character (\\u0000), which is not supported.")
    try:
        body = loadb(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise bad_request(TOO_DEEP) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"The body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("The JSON body must be an object.")
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _too_deep(body, MAX_JSON_DEPTH):
        # json.loads stops near Python's recursion limit, but what it accepts there cannot be
        # encoded again deeper in a call stack (a worker's, say): draw the line well before.
        raise bad_request(TOO_DEEP)
    if (b"\\ud" in raw or b"\\uD" in raw) and _has_lone_surrogate(body):
        # Valid JSON, but not Unicode: neither jsonb nor an upstream could take it.
        raise bad_request(
            "The body contains an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)."
        )
    return body


def _reject_constant(name: str) -> Any:
    # Python reads NaN and Infinity; JSON (and so jsonb and every upstream) has no such thing.
    raise bad_request(f"The body is not valid JSON: {name} is not a JSON number.")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise bad_request(f"The body is not valid JSON: {text[:32]} is out of range.")
    return value


def _too_deep(body: dict[str, Any], limit: int) -> bool:
    """Whether arrays and objects nest more than ``limit`` levels (without recursion)."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def _has_lone_surrogate(body: dict[str, Any]) -> bool:
    """Paired escapes decode to one character; only unpaired ones fail to encode."""
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def _require(body: dict[str, Any], field: str, kinds: tuple[type, ...], what: str) -> Any:
    value = body.get(field)
    if value is None:
        raise bad_request(
            f"Missing required parameter: '{field}'.",
            param=field,
            code=RequestErrorCode.MISSING_REQUIRED_PARAMETER,
        )
    if not isinstance(value, kinds) or (isinstance(value, str | list) and not value):
        raise bad_request(
            f"Invalid '{field}': expected {what}.", param=field, code=RequestErrorCode.INVALID_TYPE
        )
    return value


def _optional_bool(body: dict[str, Any], field: str) -> bool:
    value = body.get(field)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(
            f"Invalid '{field}': expected a boolean.",
            param=field,
            code=RequestErrorCode.INVALID_TYPE,
        )
    return value


def check_metadata(body: dict[str, Any]) -> None:
    metadata = body.get("metadata")
    if metadata is None:
        return
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_PAIRS:
        raise bad_request("'metadata' must be an object with at most 16 pairs.", param="metadata")
    for key, value in metadata.items():
        if len(key) > 64 or not isinstance(value, str) or len(value) > 512:
            raise bad_request(
                "'metadata' keys must be at most 64 characters and values strings of at most "
                "512 characters.",
                param="metadata",
            )


def _legacy(param: str, what: str, instead: str) -> APIError:
    return bad_request(
        deprecated(what, instead),
        param=param,
        code=RequestErrorCode.LEGACY_FUNCTION_CALLING,
    )


def check_no_legacy_functions(body: dict[str, Any]) -> None:
    """A 400 ``legacy_function_calling`` for chat's deprecated function calling (``tools``,
    ``tool_choice`` and ``tool_calls`` replaced it). Such a field set to ``null`` says nothing
    and is dropped, so no upstream ever gets one. ``messages`` must be a list of objects."""
    for field, instead in LEGACY_CHAT_FIELDS.items():
        if body.get(field) is not None:
            raise _legacy(field, f"'{field}'", f"'{instead}'")
        body.pop(field, None)
    for index, message in enumerate(body["messages"]):
        if message.get("role") == "function":
            raise _legacy(
                f"messages[{index}].role",
                f"The role 'function' (messages[{index}].role)",
                "role 'tool' with 'tool_call_id'",
            )
        if message.get("function_call") is not None:
            raise _legacy(
                f"messages[{index}].function_call",
                f"'messages[{index}].function_call'",
                "'tool_calls'",
            )
        message.pop("function_call", None)


def _check_endpoint_fields(endpoint: str, body: dict[str, Any]) -> None:
    if endpoint == Endpoint.RESPONSES:
        if not any(body.get(f) is not None for f in ("prompt", "previous_response_id")):
            _require(body, "input", (str, list), "a string or a list of input items")
        check_metadata(body)
    elif endpoint == Endpoint.CHAT:
        messages = _require(body, "messages", (list,), "a non-empty list of messages")
        if not all(isinstance(m, dict) for m in messages):
            raise bad_request("Each entry of 'messages' must be an object.", param="messages")
        check_no_legacy_functions(body)
        check_metadata(body)
    else:
        _require(body, "input", (str, list), "a string or a non-empty list")


def check_translatable(body: dict[str, Any]) -> None:
    """A Responses body a chat-only deployment can take, or a 400 naming what it cannot
    (checked at acceptance, so flex, background and batch lines fail at once)."""
    try:
        chat_request(body)
    except Untranslatable as exc:
        raise bad_request(exc.message, param=exc.param, code=exc.code) from None


def check_for_chat(
    body: dict[str, Any], settings: Settings, model: ModelConfig, pin: str | None = None
) -> None:
    """``check_translatable`` when the call may reach a chat-only deployment. Run again once
    ``previous_response_id`` has put the history into the input."""
    if settings.reaches_chat(model, pin):
        check_translatable(body)


def classify(
    endpoint: str,
    raw: bytes | bytearray,
    settings: Settings,
    key: ApiKey,
    *,
    pin: str | None = None,
) -> Call:
    """Validate the body and decide realtime vs flex vs background. Raises ``APIError``.

    ``pin`` is the ``x-tiergate-deployment`` header: a deployment of the model, or a 400.
    """
    return classify_body(endpoint, parse_json(raw), settings, key, pin=pin)


def classify_body(
    endpoint: str,
    body: dict[str, Any],
    settings: Settings,
    key: ApiKey,
    *,
    pin: str | None = None,
) -> Call:
    """``classify`` for an already parsed body (batch lines come parsed)."""
    model_name = _require(body, "model", (str,), "a model name")
    _check_endpoint_fields(endpoint, body)

    tier = body.get("service_tier")
    if tier is not None and (not isinstance(tier, str) or tier not in SERVICE_TIERS):
        raise bad_request(
            f"Invalid 'service_tier': {tier!r}. Expected one of {sorted(SERVICE_TIERS)}.",
            param="service_tier",
            code=RequestErrorCode.INVALID_VALUE,
        )
    background = _optional_bool(body, "background")
    stream = _optional_bool(body, "stream")
    if background and endpoint != Endpoint.RESPONSES:
        raise bad_request("'background' is only supported on /v1/responses.", param="background")
    if stream and endpoint == Endpoint.EMBEDDINGS:
        raise bad_request("'stream' is not supported on /v1/embeddings.", param="stream")
    tier = Tier.FLEX if tier == Tier.FLEX else Tier.DEFAULT
    model = settings.models.get(model_name)
    if model is None:
        raise APIError(
            404,
            f"The model '{model_name}' does not exist.",
            param="model",
            code=RequestErrorCode.MODEL_NOT_FOUND,
        )
    if not key.may_use(model_name):
        raise APIError(
            403,
            f"This API key may not use the model '{model_name}'.",
            type="permission_error",
            param="model",
            code=RequestErrorCode.MODEL_NOT_ALLOWED,
        )
    if not model.serves(endpoint):
        served = ", ".join(model.endpoints or [])
        raise bad_request(
            f"The model '{model_name}' does not serve {endpoint} (it serves: {served}).",
            param="model",
            code=RequestErrorCode.MODEL_NOT_SUPPORTED,
        )
    if pin is not None and pin not in (names := [d.name for d in model.deployments]):
        raise bad_request(
            f"The model '{model_name}' has no deployment '{pin}' (header {Header.DEPLOYMENT});"
            f" its deployments are: {', '.join(names)}.",
            code=RequestErrorCode.UNKNOWN_DEPLOYMENT,
        )
    if endpoint == Endpoint.RESPONSES:
        check_for_chat(body, settings, model, pin)
    return Call(
        endpoint=endpoint,
        body=body,
        model=model,
        tier=tier,
        background=background,
        stream=stream,
        pin=pin,
        key_name=key.name,
        key_id=key.id,
    )
