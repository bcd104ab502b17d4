"""The words tiergate's processes and its SQL share: statuses, queues, tasks, channels, codes.

Each is spelled once, here. SQL interpolates them (``f"status = '{Status.PENDING}'"``, or
:func:`sql_in` for a set), so the database and the Python code cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum, StrEnum
from typing import Any


class Status(StrEnum):
    """A request row's status (a single request or one Batch API line)."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


LIVE = (Status.PENDING, Status.IN_PROGRESS)
FINAL = (Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.EXPIRED)
# Lines counted as ``failed`` in a batch's request_counts (they end in its error file).
UNSUCCESSFUL = (Status.FAILED, Status.EXPIRED, Status.CANCELLED)


class BatchStatus(StrEnum):
    """A batch's status, as the OpenAI Batch object spells it."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


FINAL_BATCH = (
    BatchStatus.COMPLETED,
    BatchStatus.FAILED,
    BatchStatus.EXPIRED,
    BatchStatus.CANCELLED,
)
# A batch in one of these can still end (its finalize job closes it).
CLOSABLE_BATCH = (BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING)
LIVE_BATCH = (BatchStatus.VALIDATING, *CLOSABLE_BATCH)
# A batch being cancelled: its lines still held by a provider's job end cancelled.
STOPPING_BATCH = (BatchStatus.CANCELLING, BatchStatus.CANCELLED)


class BatchKind(StrEnum):
    """``single``: the one-row batch of a flex/background request; ``file``: the Batch API."""

    SINGLE = "single"
    FILE = "file"


class FileStatus(StrEnum):
    """A stored file's status: readable only once ``processed``."""

    UPLOADING = "uploading"  # parts are still being written (an upload, or a result file)
    PROCESSED = "processed"


class Endpoint(StrEnum):
    """The inference endpoints tiergate classifies (and the Batch API runs)."""

    RESPONSES = "/v1/responses"
    CHAT = "/v1/chat/completions"
    EMBEDDINGS = "/v1/embeddings"


class ExecutorKind(StrEnum):
    """How deferred work runs (``executor:`` of a deployment; ``requests.executor``, the path
    a row ran on; see worker/executors).

    ``direct``: one call per row to the deployment's realtime endpoint; ``flex``: one call per
    row sent with ``service_tier: "flex"`` to a provider's own flex tier; ``batch``: rows
    gathered into a job of the provider's Batch API.
    """

    DIRECT = "direct"
    FLEX = "flex"
    BATCH = "batch"


class EngineKind(StrEnum):
    """The inference server behind a deployment (``engine:``), whose load and priority
    scheduler tiergate can use (docs/fleet.md): ``none`` uses neither."""

    NONE = "none"
    VLLM = "vllm"
    SGLANG = "sglang"
    LLAMACPP = "llamacpp"


# Engines that schedule by a request's ``priority`` field.
PRIORITY_ENGINES = (EngineKind.VLLM, EngineKind.SGLANG)


class CallClass(StrEnum):
    """What kind of call an upstream call serves, for an engine's ``priority:`` per class."""

    REALTIME = "realtime"
    FLEX = "flex"
    BACKGROUND = "background"
    BATCH = "batch"


class BatchApi(StrEnum):
    """The Batch API a ``batch`` deployment speaks (``batch: {api: ...}``)."""

    OPENAI = "openai"  # /v1/files + /v1/batches (OpenAI, and any tiergate)
    ANTHROPIC = "anthropic"  # /v1/messages/batches


class UpstreamJobStatus(StrEnum):
    """An upstream Batch API job as tiergate tracks it (``upstream_jobs.status``)."""

    SUBMITTING = "submitting"  # rows attached; the upload or the create may not have happened
    RUNNING = "running"  # the provider has it: polled until it ends
    ENDED = "ended"  # its rows are finished or given back


class Tier(StrEnum):
    """The ``service_tier`` stored on a row."""

    DEFAULT = "default"
    FLEX = "flex"


class PriceTier(StrEnum):
    """The tier a call is priced and counted at (``limits.tier_price``, metrics, usage):
    Batch API lines are stored as ``flex`` rows but priced as ``batch``."""

    DEFAULT = "default"
    FLEX = "flex"
    BATCH = "batch"


# The pricing tier of a ``requests`` row, in SQL.
SQL_PRICE_TIER = f"CASE WHEN batch_id IS NULL THEN service_tier ELSE '{PriceTier.BATCH}' END"


class UsagePath(StrEnum):
    """What a report calls rows without an executor (``requests.executor`` is NULL)."""

    CACHE = "cache"  # answered from the response cache: no upstream call
    REALTIME = "realtime"  # a realtime call (the gateway called the deployment)
    NONE = "none"  # a deferred row that never ran (expired, cancelled, or older than 0019)


def sql_executor_path(r: str = "") -> str:
    """The path a ``requests`` row ran on, in SQL (``r``: the table's alias and a dot):
    ``direct``, ``flex``, ``batch`` (``requests.executor``), else a :class:`UsagePath`. The
    same expression as the ``executor`` column of the view ``tiergate_usage_by_key``
    (migration 0020)."""
    return (
        f"CASE WHEN {r}executor IS NOT NULL THEN {r}executor"
        f" WHEN {r}cache IN ('{CacheResult.HIT}', '{CacheResult.SEMANTIC_HIT}')"
        f" THEN '{UsagePath.CACHE}'"
        f" WHEN {r}batch_id IS NULL AND {r}service_tier <> '{Tier.FLEX}' AND NOT {r}background"
        f" THEN '{UsagePath.REALTIME}' ELSE '{UsagePath.NONE}' END"
    )


def sql_call_class(r: str = "") -> str:
    """The :class:`CallClass` of a ``requests`` row, in SQL (``r``: the table's alias and a
    dot): a Batch API line, a background request, a flex one, else realtime."""
    return (
        f"CASE WHEN {r}custom_id IS NOT NULL THEN '{CallClass.BATCH}'"
        f" WHEN {r}background THEN '{CallClass.BACKGROUND}'"
        f" WHEN {r}service_tier = '{Tier.FLEX}' THEN '{CallClass.FLEX}'"
        f" ELSE '{CallClass.REALTIME}' END"
    )


class Queue(StrEnum):
    """procrastinate queues (single requests are claimed from ``requests``, not queued)."""

    BATCH = "batch"


class Task(StrEnum):
    """procrastinate task names."""

    VALIDATE_BATCH = "tiergate.validate_batch"
    RUN_BATCH = "tiergate.run_batch"
    FINALIZE_BATCH = "tiergate.finalize_batch"


class Priority(IntEnum):
    """Higher runs first: ``requests.priority`` of deferred requests, procrastinate's for jobs."""

    BACKGROUND = 100  # background calls of the default tier: someone is polling
    FLEX = 0
    BATCH = 0


class ProcessKind(StrEnum):
    """What a row of ``processes`` is."""

    GATEWAY = "gateway"
    WORKER = "worker"


class DeploymentState(StrEnum):
    """A deployment's circuit as one process sees it (``app/upstream/health.py``)."""

    HEALTHY = "healthy"
    OUT = "out"  # cooling down after faults, or resting after a 429
    PROBING = "probing"  # cool-down over: one trial call decides


class Header(StrEnum):
    """HTTP headers tiergate reads or writes (besides OpenAI's own)."""

    DEPLOYMENT = "x-tiergate-deployment"  # request: pin one; answer: which one served
    CACHE = "x-tiergate-cache"  # request: bypass; answer: a CacheResult


class CacheResult(StrEnum):
    """What the response cache did for a call (``requests.cache``, ``x-tiergate-cache``)."""

    HIT = "hit"  # the same request's answer
    SEMANTIC_HIT = "semantic-hit"  # a verified answer to a request meaning the same
    MISS = "miss"  # asked the upstream; the answer is stored when it may be
    BYPASS = "bypass"  # the client (header) or its key (cache off) skipped the cache


class Channel(StrEnum):
    """PostgreSQL NOTIFY channels."""

    DONE = "tiergate_done"  # payload: the id of a request that reached a final status
    WORK = "tiergate_work"  # payload: a model whose deferred requests became claimable
    KEYS = "tiergate_keys"  # payload: the id of a revoked key
    EVENTS = "tiergate_events"  # payload: a streamed background Response that stored events
    WEBHOOKS = "tiergate_webhooks"  # payload: empty; webhook deliveries were written


class WebhookEvent(StrEnum):
    """The webhook events tiergate sends (OpenAI's names and shapes)."""

    RESPONSE_COMPLETED = "response.completed"
    RESPONSE_FAILED = "response.failed"
    RESPONSE_CANCELLED = "response.cancelled"
    RESPONSE_INCOMPLETE = "response.incomplete"
    BATCH_COMPLETED = "batch.completed"
    BATCH_FAILED = "batch.failed"
    BATCH_CANCELLED = "batch.cancelled"
    BATCH_EXPIRED = "batch.expired"


class DeliveryStatus(StrEnum):
    """A webhook delivery's status (``webhook_deliveries.status``)."""

    PENDING = "pending"  # due at next_attempt_at (a claimed one: after its lease)
    DELIVERED = "delivered"  # the endpoint answered 2xx
    FAILED = "failed"  # retried until its event was too old: given up


# A delivery that no worker will attempt again (what retention may delete).
FINISHED_DELIVERY = (DeliveryStatus.DELIVERED, DeliveryStatus.FAILED)


class ErrorCode(StrEnum):
    """Error codes stored on rows (``requests.error``) by SQL as well as by Python.

    Admins group failures by them (the ``tiergate_failures`` view), so they say exactly what
    went wrong; a Response object shows OpenAI's name for each (:func:`response_error_code`).
    An upstream that answered an error status is stored as ``upstream_<status>``
    (:func:`upstream_status`); a realtime row keeps the upstream's own code if it sent one.
    """

    CANCELLED = "cancelled"
    BATCH_CANCELLED = "batch_cancelled"
    BATCH_EXPIRED = "batch_expired"
    REQUEST_EXPIRED = "request_expired"
    GATEWAY_INTERRUPTED = "gateway_interrupted"
    PROCESSING_FAILED = "processing_failed"
    NO_CAPACITY = "no_capacity"
    MODEL_NOT_CONFIGURED = "model_not_configured"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_UNREACHABLE = "upstream_unreachable"  # the request never reached the provider
    UPSTREAM_CONNECTION_BROKEN = "upstream_connection_broken"  # it may have
    UPSTREAM_BAD_RESPONSE = "upstream_bad_response"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_STREAM_BROKEN = "upstream_stream_broken"
    CLIENT_DISCONNECTED = "client_disconnected"
    # A Responses call a chat-only deployment cannot take (e.g. a config changed since it
    # was accepted; acceptance refuses such calls with a 400 naming the field).
    UNTRANSLATABLE = "untranslatable_request"
    # A provider's flex tier had no capacity (OpenAI's 429 "resource unavailable").
    FLEX_UNAVAILABLE = "flex_resource_unavailable"
    # A provider's Batch API job: it failed or expired whole, its output could not be read,
    # or it said nothing of a row.
    UPSTREAM_JOB_FAILED = "upstream_batch_failed"
    UPSTREAM_JOB_EXPIRED = "upstream_batch_expired"
    UPSTREAM_JOB_CANCELLED = "upstream_batch_cancelled"
    UPSTREAM_JOB_LOST = "upstream_batch_lost"
    UPSTREAM_JOB_BAD_OUTPUT = "upstream_batch_bad_output"
    UPSTREAM_JOB_LINE_MISSING = "upstream_batch_line_missing"


class UpstreamApi(StrEnum):
    """Which API a deployment speaks (``api:`` in the config)."""

    RESPONSES = "responses"  # /v1/responses passed through as it is
    CHAT = "chat"  # only /v1/chat/completions: Responses calls are translated


class TokenField(StrEnum):
    """The chat field a deployment reads the token limit from (``max_tokens_field:``)."""

    MAX_TOKENS = "max_tokens"
    MAX_COMPLETION_TOKENS = "max_completion_tokens"


class AccessCode(StrEnum):
    """Codes of errors about what a key may do (answered, never stored)."""

    # A key not created with ``--admin`` asked for the organization usage or costs.
    INSUFFICIENT_PERMISSIONS = "insufficient_permissions"


UPSTREAM_STATUS_PREFIX = "upstream_"


def upstream_status(status: int) -> str:
    """The stored code of an upstream's error answer: ``upstream_503``."""
    return f"{UPSTREAM_STATUS_PREFIX}{status}"


class ResponseErrorCode(StrEnum):
    """The codes of OpenAI's ``ResponseError`` that tiergate's failures map to."""

    SERVER_ERROR = "server_error"
    RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
    INVALID_PROMPT = "invalid_prompt"


# Every code OpenAI's ResponseError allows (the SDK's type rejects any other): an upstream's
# own code that is one of them is shown as it is.
OPENAI_RESPONSE_CODES = frozenset(
    {
        "server_error", "rate_limit_exceeded", "invalid_prompt", "vector_store_timeout",
        "invalid_image", "invalid_image_format", "invalid_base64_image", "invalid_image_url",
        "image_too_large", "image_too_small", "image_parse_error",
        "image_content_policy_violation", "invalid_image_mode", "image_file_too_large",
        "unsupported_image_media_type", "empty_image_file", "failed_to_download_image",
        "image_file_not_found",
    }
)  # fmt: skip
# A flex request that expired did not get capacity in time: OpenAI's flex tier says 429.
RESPONSE_CODES: dict[str, ResponseErrorCode] = {
    ErrorCode.REQUEST_EXPIRED: ResponseErrorCode.RATE_LIMIT_EXCEEDED,
    ErrorCode.BATCH_EXPIRED: ResponseErrorCode.RATE_LIMIT_EXCEEDED,
    ErrorCode.UPSTREAM_JOB_EXPIRED: ResponseErrorCode.RATE_LIMIT_EXCEEDED,
}
# An upstream's error status, by what it says about the request.
STATUS_RESPONSE_CODES: dict[int, ResponseErrorCode] = {
    400: ResponseErrorCode.INVALID_PROMPT,
    413: ResponseErrorCode.INVALID_PROMPT,
    422: ResponseErrorCode.INVALID_PROMPT,
    429: ResponseErrorCode.RATE_LIMIT_EXCEEDED,
}


def response_error_code(code: str | None, status: int | None = None) -> str:
    """OpenAI's ResponseError code for a stored ``code`` (and the upstream's ``status``, if
    it answered): one of OpenAI's codes stays; every other failure is a ``server_error``
    unless it was a rate limit or a request the upstream refused as invalid."""
    if code is not None:
        if code in OPENAI_RESPONSE_CODES:
            return code
        if code in RESPONSE_CODES:
            return RESPONSE_CODES[code]
        digits = code.removeprefix(UPSTREAM_STATUS_PREFIX)
        if code.startswith(UPSTREAM_STATUS_PREFIX) and digits.isdigit():
            status = int(digits)
    return STATUS_RESPONSE_CODES.get(status or 0, ResponseErrorCode.SERVER_ERROR)


MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.CANCELLED: "Cancelled by the client.",
    ErrorCode.BATCH_CANCELLED: "The batch was cancelled before this line ran.",
    ErrorCode.BATCH_EXPIRED: "This line was not processed before the batch expired.",
    ErrorCode.REQUEST_EXPIRED: "The request was not processed within its window.",
    ErrorCode.GATEWAY_INTERRUPTED: "The gateway stopped before the call finished.",
    ErrorCode.PROCESSING_FAILED: (
        "tiergate could not process this request: its job failed again and again"
        " (see the worker logs)."
    ),
    ErrorCode.NO_CAPACITY: (
        "No deployment of this model can take the call now (all out of rotation or busy)."
    ),
    ErrorCode.FLEX_UNAVAILABLE: "The provider's flex tier had no capacity; tried again later.",
    ErrorCode.UPSTREAM_JOB_FAILED: "The provider's batch job failed; the row runs again.",
    ErrorCode.UPSTREAM_JOB_EXPIRED: (
        "The provider's batch job expired before this row ran; the row runs again."
    ),
    ErrorCode.UPSTREAM_JOB_CANCELLED: (
        "The provider's batch job was cancelled before this row ran; the row runs again."
    ),
    ErrorCode.UPSTREAM_JOB_LOST: (
        "The provider no longer knows the batch job holding this row; the row runs again."
    ),
    ErrorCode.UPSTREAM_JOB_BAD_OUTPUT: (
        "The provider's batch job answered output that could not be read; the row runs again."
    ),
    ErrorCode.UPSTREAM_JOB_LINE_MISSING: (
        "The provider's batch job ended without a result for this row; the row runs again."
    ),
}


def error(code: ErrorCode) -> dict[str, Any]:
    """The stored error object for ``code``: ``{"code", "message"}``."""
    return {"code": str(code), "message": MESSAGES[code]}


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_in(values: Iterable[str]) -> str:
    """A parenthesised list of SQL literals: ``('pending', 'in_progress')``."""
    return "(" + ", ".join(_quote(str(v)) for v in values) + ")"


def sql_error(code: ErrorCode) -> str:
    """SQL building the same object as :func:`error`."""
    return f"jsonb_build_object('code', {_quote(code)}, 'message', {_quote(MESSAGES[code])})"


class RequestErrorCode(StrEnum):
    """Codes of the errors tiergate answers a request with (the ``code`` of an OpenAI error
    body; never stored on a row). Limits and permissions have theirs: :class:`LimitCode`,
    :class:`AccessCode`."""

    PREVIOUS_RESPONSE_NOT_FOUND = "previous_response_not_found"
    PREVIOUS_RESPONSE_NOT_FINISHED = "previous_response_not_finished"
    # Chat's deprecated function calling (``functions``, ``function_call``, role
    # ``function``): refused on every tier, never forwarded; ``tools`` replaces it.
    LEGACY_FUNCTION_CALLING = "legacy_function_calling"
    # The body or the query is not what the endpoint takes.
    INVALID_VALUE = "invalid_value"
    INVALID_TYPE = "invalid_type"
    # A parameter the model's upstream API cannot express (refused, never silently dropped).
    UNSUPPORTED_PARAMETER = "unsupported_parameter"
    MISSING_REQUIRED_PARAMETER = "missing_required_parameter"
    UNKNOWN_PARAMETER = "unknown_parameter"
    REQUEST_TOO_LARGE = "request_too_large"
    FILE_TOO_LARGE = "file_too_large"
    REQUEST_TIMEOUT = "request_timeout"  # the body did not arrive in time
    # What the request names does not exist, or not for this key.
    NOT_FOUND = "not_found"
    MODEL_NOT_FOUND = "model_not_found"
    MODEL_NOT_ALLOWED = "model_not_allowed"
    MODEL_NOT_SUPPORTED = "model_not_supported"  # the endpoint is not one the model serves
    UNKNOWN_DEPLOYMENT = "unknown_deployment"  # x-tiergate-deployment
    UNKNOWN_URL = "unknown_url"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    INVALID_API_KEY = "invalid_api_key"
    # The request is fine but its object is not in the state it asks for.
    NOT_BACKGROUND = "not_background"  # only a background Response can be cancelled
    NOT_READY = "not_ready"  # a chat completion read before it finished
    # a stored chat completion that is a line of a batch still running (deleted once it ends)
    BATCH_NOT_FINISHED = "batch_not_finished"
    STILL_RUNNING = "still_running"  # a blocking flex client's wait ended first
    # tiergate cannot take it now.
    SERVER_BUSY = "server_busy"  # the byte budget of bodies being read is spent
    SERVICE_UNAVAILABLE = "service_unavailable"
    DATABASE_UNAVAILABLE = "database_unavailable"
    INTERNAL_ERROR = "internal_error"


class BatchErrorCode(StrEnum):
    """Codes of the errors that fail a batch's validation (``batches.errors``, one per line
    at fault); a line the gateway would refuse keeps the :class:`RequestErrorCode` it would
    get, ``invalid_request`` when it has none."""

    INVALID_JSON_LINE = "invalid_json_line"
    INVALID_REQUEST = "invalid_request"
    DUPLICATE_CUSTOM_ID = "duplicate_custom_id"
    MODEL_MISMATCH = "model_mismatch"
    URL_MISMATCH = "url_mismatch"
    TOO_MANY_TASKS = "too_many_tasks"
    EMPTY_FILE = "empty_file"
    INVALID_API_KEY = "invalid_api_key"  # the batch's key was revoked


class LimitCode(StrEnum):
    """Codes of 429s for a key over its limits (OpenAI's: the SDK retries the first only)."""

    RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
    INSUFFICIENT_QUOTA = "insufficient_quota"


class LimitKind(StrEnum):
    """The ``type`` of a ``rate_limit_exceeded`` error: which limit was hit (as OpenAI)."""

    REQUESTS = "requests"
    TOKENS = "tokens"


class BudgetPeriod(StrEnum):
    """``api_keys.budget_period``: calendar periods in UTC, or the key's whole life."""

    DAY = "day"
    MONTH = "month"
    TOTAL = "total"


class RateLimitHeader(StrEnum):
    """OpenAI's rate-limit headers, on every answer to a realtime call of a limited key."""

    LIMIT_REQUESTS = "x-ratelimit-limit-requests"
    REMAINING_REQUESTS = "x-ratelimit-remaining-requests"
    RESET_REQUESTS = "x-ratelimit-reset-requests"
    LIMIT_TOKENS = "x-ratelimit-limit-tokens"
    REMAINING_TOKENS = "x-ratelimit-remaining-tokens"
    RESET_TOKENS = "x-ratelimit-reset-tokens"
    RETRY_AFTER = "retry-after"
