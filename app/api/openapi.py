"""The OpenAPI 3.1 document served at ``GET /openapi.json``, built from the settings.

Hand-written and kept truthful: a request schema states only what tiergate itself checks
(``app/validation.py`` and the routes); every other field of an inference body passes to the
upstream untouched, so it is allowed but not described. Realtime calls relay the upstream's
error status (its body in OpenAI's error shape), hence the ``4XX``/``5XX`` ranges on the
inference operations.
"""

from __future__ import annotations

from typing import Any

from app.api.routes.params import MAX_EXPIRY_S, MIN_EXPIRY_S
from app.ids import ID_PATTERN
from app.openai.chat_request import LEGACY_CHAT_FIELDS
from app.openai.validation import INFERENCE_ENDPOINTS, MAX_METADATA_PAIRS, SERVICE_TIERS
from app.settings import Settings

Schema = dict[str, Any]

NULLABLE_STRING: Schema = {"type": ["string", "null"]}
TIMESTAMP: Schema = {"type": ["integer", "null"], "description": "Unix seconds"}
NOT_NULL: Schema = {"not": {"type": "null"}}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": json_content(ref("Error"))}


ERRORS = {
    "400": "Invalid request (OpenAI error body; `param` names the field)",
    "401": "Missing or unknown API key (`invalid_api_key`)",
    "403": "The key may not use this model (`model_not_allowed`), or is not an admin key"
    " (`insufficient_permissions`, organization endpoints)",
    "404": "No such object for this key, or unknown model (`model_not_found`)",
    "413": "Body or file larger than the configured limit",
    "429": "The key is over its rpm/tpm (`rate_limit_exceeded`, with `retry-after`) or has"
    " spent its budget (`insufficient_quota`); a flex request whose completion window passed"
    " (`request_expired`)",
    "502": "The upstream failed and retries ran out",
    "503": "The database is unavailable; retry shortly",
    "504": "A blocking flex request still running when its wait ended",
}


def _responses(ok: dict[str, Any], *codes: str) -> dict[str, Any]:
    out: dict[str, Any] = {"200": ok}
    out.update({code: _error(ERRORS[code]) for code in ("401", *codes, "503")})
    return out


def _ok(schema: Schema, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": json_content(schema)}


def _id_param(what: str) -> Schema:
    return {
        "name": "id",
        "in": "path",
        "required": True,
        "description": f"A {what} id of the caller's key (any other value is a 404)",
        "schema": {"type": "string"},
    }


def _page_params(maximum: int) -> list[Schema]:
    return [
        {
            "name": "after",
            "in": "query",
            "description": "The id of the last object of the previous page (empty: the "
            "first page; 400 if it cannot be an id)",
            "schema": {"type": "string", "pattern": f"^({ID_PATTERN.pattern})?$"},
        },
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": maximum},
        },
    ]


def _metadata() -> Schema:
    return {
        "type": ["object", "null"],
        "maxProperties": MAX_METADATA_PAIRS,
        "propertyNames": {"maxLength": 64},
        "additionalProperties": {"type": "string", "maxLength": 512},
    }


def _flag() -> Schema:
    return {"type": ["boolean", "null"]}


def _legacy(description: str) -> Schema:
    """A deprecated function-calling field: refused (400 `legacy_function_calling`)."""
    return {"type": "null", "description": f"{description} (400 `legacy_function_calling`)"}


def _chat_message() -> Schema:
    return {
        "type": "object",
        "properties": {
            "role": {
                "not": {"const": "function"},
                "description": "Not `function`: use `tool` (400 `legacy_function_calling`)",
            },
            "function_call": _legacy("Deprecated: use `tool_calls`"),
        },
    }


def _inference_body(settings: Settings, endpoint: str) -> Schema:
    """What the tier middleware checks; other fields go to the upstream as they are."""
    models = sorted(settings.models)
    properties: dict[str, Schema] = {
        "model": {
            "type": "string",
            "enum": models,
            "description": "One of the gateway's models: any other name is a 404 "
            "(`model_not_found`), one outside the key's list a 403",
        },
        "service_tier": {
            "type": ["string", "null"],
            "enum": [*sorted(SERVICE_TIERS), None],
            "description": "`flex` runs on a worker; the others are realtime",
        },
        "stream": _flag(),
    }
    schema: Schema = {"type": "object", "required": ["model"], "properties": properties}
    non_empty = [{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1}]
    if endpoint == "/v1/responses":
        properties |= {
            "input": {"anyOf": [*non_empty, {"type": "null"}]},
            "prompt": {},
            "previous_response_id": {
                "description": "An earlier Response of the same key: its input and output go "
                "before this input (404 `previous_response_not_found` otherwise)"
            },
            "background": {
                **_flag(),
                "description": "Run on a worker and answer at once: a queued Response, or "
                "with `stream: true` its stored events as they are produced",
            },
            "metadata": _metadata(),
        }
        # ``input`` may be left out when a prompt or a previous response stands in for it.
        schema["anyOf"] = [
            {"required": [name], "properties": {name: NOT_NULL}}
            for name in ("input", "prompt", "previous_response_id")
        ]
    elif endpoint == "/v1/chat/completions":
        properties |= {
            "messages": {"type": "array", "minItems": 1, "items": _chat_message()},
            "background": {"enum": [False, None], "description": "Only /v1/responses"},
            "metadata": _metadata(),
        }
        properties |= {
            field: _legacy(f"Deprecated: use `{instead}`")
            for field, instead in LEGACY_CHAT_FIELDS.items()
        }
        schema["required"] = ["model", "messages"]
    else:
        properties |= {
            "input": {"anyOf": non_empty},
            "stream": {"enum": [False, None], "description": "Not supported on embeddings"},
        }
        schema["required"] = ["model", "input"]
    return schema


def _inference_operation(settings: Settings, endpoint: str) -> Schema:
    name = endpoint.removeprefix("/v1/")
    result = ref("Embeddings") if name == "embeddings" else ref("UpstreamObject")
    ok = {
        "description": "Realtime: the upstream's answer (SSE when streaming); flex: the same "
        "once a worker ran it; background: a queued Response object, or with `stream` its "
        "events (stored, resumable with `GET /v1/responses/{id}?stream=true&starting_after=N`)",
        "content": {
            "application/json": {"schema": result},
            "text/event-stream": {},  # the upstream's events, relayed byte for byte
        },
    }
    responses = _responses(ok, "400", "403", "404", "413", "429", "502", "504")
    upstream = _error("The upstream's error status; its text (JSON, plain text, HTML) as message")
    responses |= {"4XX": upstream, "5XX": upstream}
    return {
        "post": {
            "operationId": f"create_{name.replace('/', '_')}",
            "summary": f"Realtime, flex or background {name}",
            "description": "The `x-request-id` header carries the id to retrieve it by. For a"
            " model with a response cache, `x-tiergate-cache` says what it did (`hit`,"
            " `semantic-hit`, `miss`, `bypass`); the request header `x-tiergate-cache: bypass`"
            " skips it. `x-tiergate-deployment` pins a deployment of the model.",
            "requestBody": {
                "required": True,
                "content": json_content(_inference_body(settings, endpoint)),
            },
            "responses": responses,
        }
    }


def _paths(settings: Settings) -> dict[str, Any]:
    windows = sorted(settings.limits.batch_windows)
    paths: dict[str, Any] = {
        endpoint: _inference_operation(settings, endpoint) for endpoint in INFERENCE_ENDPOINTS
    }
    paths["/v1/responses/{id}"] = {
        "parameters": [_id_param("request")],
        "get": {
            "operationId": "retrieve_response",
            "parameters": [
                {
                    "name": "stream",
                    "in": "query",
                    "description": "`true`: the Response's events as server-sent events, "
                    "the stored ones then the live ones until the terminal event",
                    "schema": {"type": "boolean", "default": False},
                },
                {
                    "name": "starting_after",
                    "in": "query",
                    "description": "With `stream`: only events whose `sequence_number` is "
                    "greater (a client that dropped resumes with the last one it saw)",
                    "schema": {"type": "integer", "minimum": 0},
                },
            ],
            "responses": _responses(
                {
                    "description": "The Response (`text/event-stream` with `stream=true`)",
                    "content": {**json_content(ref("Response")), "text/event-stream": {}},
                },
                "400",
                "404",
            ),
        },
        "delete": {
            "operationId": "delete_response",
            "responses": _responses(_ok(ref("Deleted")), "404"),
        },
    }
    paths["/v1/responses/{id}/input_items"] = {
        "parameters": [_id_param("request")],
        "get": {
            "operationId": "list_input_items",
            "description": "A Response's input items, an earlier response's history included"
            " when it was built with previous_response_id",
            "parameters": [
                {
                    "name": "after",
                    "in": "query",
                    "description": "The id of the last item of the previous page (400 if the"
                    " response has no such item)",
                    "schema": {"type": "string"},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                },
                {
                    "name": "order",
                    "in": "query",
                    "schema": {"enum": ["asc", "desc"], "default": "desc"},
                },
            ],
            "responses": _responses(_ok(ref("InputItemList")), "400", "404"),
        },
    }
    paths["/v1/responses/{id}/cancel"] = {
        "parameters": [_id_param("request")],
        "post": {
            "operationId": "cancel_response",
            "description": "Background requests only (400 otherwise); idempotent.",
            "responses": _responses(_ok(ref("Response")), "400", "404"),
        },
    }
    paths["/v1/chat/completions"]["get"] = _list_chat_completions()
    paths.update(_stored_chat_paths())
    paths["/v1/files"] = {
        "post": {
            "operationId": "upload_file",
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file", "purpose"],
                            "properties": {
                                "file": {"type": "string", "format": "binary"},
                                "purpose": {"type": "string", "enum": ["batch"]},
                                "expires_after[anchor]": {"enum": ["created_at"]},
                                "expires_after[seconds]": {
                                    "type": "integer",
                                    "minimum": MIN_EXPIRY_S,
                                    "maximum": MAX_EXPIRY_S,
                                    "description": "The file is a 404 this long after its "
                                    "upload, and deleted by the workers",
                                },
                            },
                            "dependentRequired": {
                                "expires_after[anchor]": ["expires_after[seconds]"],
                                "expires_after[seconds]": ["expires_after[anchor]"],
                            },
                        }
                    }
                },
            },
            "responses": _responses(_ok(ref("File")), "400", "413"),
        },
        "get": {
            "operationId": "list_files",
            "parameters": [
                {"name": "purpose", "in": "query", "schema": {"type": "string"}},
                {
                    "name": "order",
                    "in": "query",
                    "description": "By creation time; `after` pages on in the same order",
                    "schema": {"enum": ["asc", "desc"], "default": "desc"},
                },
                *_page_params(10_000),
            ],
            "responses": _responses(_ok(ref("FileList")), "400"),
        },
    }
    paths["/v1/files/{id}"] = {
        "parameters": [_id_param("file")],
        "get": {"operationId": "retrieve_file", "responses": _responses(_ok(ref("File")), "404")},
        "delete": {
            "operationId": "delete_file",
            "responses": _responses(_ok(ref("DeletedFile")), "404"),
        },
    }
    paths["/v1/files/{id}/content"] = {
        "parameters": [_id_param("file")],
        "get": {
            "operationId": "download_file",
            "responses": _responses(
                {
                    "description": "The file's bytes",
                    "content": {"application/octet-stream": {"schema": {"type": "string"}}},
                },
                "404",
            ),
        },
    }
    paths["/v1/batches"] = {
        "post": {
            "operationId": "create_batch",
            "description": "Validation of the file's lines runs in a job: a bad file turns "
            "the batch `failed` with `errors.data`.",
            "requestBody": {
                "required": True,
                "content": json_content(
                    {
                        "type": "object",
                        "required": ["input_file_id", "endpoint", "completion_window"],
                        "properties": {
                            "input_file_id": {"type": "string"},
                            "endpoint": {"type": "string", "enum": list(INFERENCE_ENDPOINTS)},
                            "completion_window": {"type": "string", "enum": windows},
                            "metadata": _metadata(),
                        },
                    }
                ),
            },
            "responses": _responses(_ok(ref("Batch")), "400", "404", "413", "429"),
        },
        "get": {
            "operationId": "list_batches",
            "parameters": _page_params(100),
            "responses": _responses(_ok(ref("BatchList")), "400"),
        },
    }
    paths["/v1/batches/{id}"] = {
        "parameters": [_id_param("batch")],
        "get": {"operationId": "retrieve_batch", "responses": _responses(_ok(ref("Batch")), "404")},
    }
    paths["/v1/batches/{id}/cancel"] = {
        "parameters": [_id_param("batch")],
        "post": {"operationId": "cancel_batch", "responses": _responses(_ok(ref("Batch")), "404")},
    }
    paths["/v1/models"] = {
        "get": {"operationId": "list_models", "responses": _responses(_ok(ref("ModelList")))}
    }
    paths["/v1/models/{model}"] = {
        "parameters": [
            {
                "name": "model",
                "in": "path",
                "required": True,
                "description": "A model the caller's key may use (any other name is a 404)",
                "schema": {"type": "string"},
            }
        ],
        "get": {
            "operationId": "retrieve_model",
            "responses": _responses(_ok(ref("Model")), "404"),
        },
    }
    return paths | _organization_paths() | _ops_paths()


def _order_param(what: str) -> Schema:
    return {
        "name": "order",
        "in": "query",
        "description": f"By {what}; `after` pages on in the same order",
        "schema": {"enum": ["asc", "desc"], "default": "asc"},
    }


def _list_chat_completions() -> Schema:
    """OpenAI's stored chat completions: the completed chat completions of the caller's key."""
    return {
        "operationId": "list_chat_completions",
        "description": "The key's completed chat completions, every tier (not those created "
        "with `store: false`), oldest first unless `order=desc`",
        "parameters": [
            {
                "name": "model",
                "in": "query",
                "description": "Only this model (as the client named it)",
                "schema": {"type": "string", "maxLength": 1024},
            },
            {
                "name": "metadata",
                "in": "query",
                "style": "deepObject",
                "explode": True,
                "description": "`metadata[key]=value`: only completions whose metadata holds "
                "every pair given",
                # On the wire every value is a string: the schema limits lengths only.
                "schema": {
                    "type": "object",
                    "maxProperties": MAX_METADATA_PAIRS,
                    "propertyNames": {"maxLength": 64},
                    "additionalProperties": {"maxLength": 512},
                },
            },
            _order_param("creation time"),
            *_page_params(100),
        ],
        "responses": _responses(_ok(ref("ChatCompletionList")), "400"),
    }


def _stored_chat_paths() -> dict[str, Any]:
    """A stored chat completion by id: retrieve, update, delete, its messages."""
    chat_id = [_id_param("chat completion")]
    completion = _ok(ref("ChatCompletion"))
    update_body = {
        "type": "object",
        "required": ["metadata"],
        "properties": {"metadata": _metadata()},
        "additionalProperties": False,
    }
    return {
        "/v1/chat/completions/{id}": {
            "parameters": chat_id,
            "get": {
                "operationId": "retrieve_chat_completion",
                "responses": _responses(completion, "404"),
            },
            "post": {
                "operationId": "update_chat_completion",
                "description": "Replace the completion's `metadata` (`null`: none)",
                "requestBody": {"required": True, "content": json_content(update_body)},
                "responses": _responses(completion, "400", "404", "413"),
            },
            "delete": {
                "operationId": "delete_chat_completion",
                "description": "A 404 everywhere afterwards; a line of a batch still running "
                "is a 400 `batch_not_finished`",
                "responses": _responses(_ok(ref("ChatCompletionDeleted")), "400", "404"),
            },
        },
        "/v1/chat/completions/{id}/messages": {
            "parameters": chat_id,
            "get": {
                "operationId": "list_chat_completion_messages",
                "description": "The messages of the completion's request, ids "
                "`{completion id}-{index}`",
                "parameters": [
                    {
                        "name": "after",
                        "in": "query",
                        "description": "The id of the last message of the previous page (400 "
                        "if the completion has no such message)",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                    },
                    _order_param("position"),
                ],
                "responses": _responses(_ok(ref("ChatCompletionMessageList")), "400", "404"),
            },
        },
    }


def _organization_paths() -> dict[str, Any]:
    """Every key's usage and costs, in OpenAI's organization shapes: admin keys only."""

    def query(name: str, schema: Schema, description: str, required: bool = False) -> Schema:
        found: Schema = {"name": name, "in": "query", "schema": schema}
        found["description"] = description
        if required:
            found["required"] = True
        return found

    def operation(operation_id: str, widths: list[str], groups: list[str]) -> dict[str, Any]:
        parameters = [
            query("start_time", {"type": "integer", "minimum": 0}, "Unix seconds", True),
            query("end_time", {"type": "integer", "minimum": 1}, "Unix seconds (default: now)"),
            query("bucket_width", {"enum": widths}, "bucket width (default 1d)"),
            query(
                "group_by",
                {"type": "array", "items": {"enum": groups}},
                "group each bucket's results by these fields",
            ),
            query("limit", {"type": "integer", "minimum": 1}, "buckets per page"),
            query("page", {"type": "string"}, "a previous page's next_page"),
            query("models", {"type": "array", "items": {"type": "string"}}, "only these"),
            query("api_key_ids", {"type": "array", "items": {"type": "string"}}, "only these"),
        ]
        ok = _ok(ref("UsagePage"), "A page of time buckets")
        return {
            "get": {
                "operationId": operation_id,
                "parameters": parameters,
                "responses": _responses(ok, "400", "403"),
            }
        }

    usage_groups = ["model", "api_key_id", "project_id"]
    return {
        "/v1/organization/usage/completions": operation(
            "usage_completions", ["1m", "1h", "1d"], [*usage_groups, "batch"]
        ),
        "/v1/organization/usage/embeddings": operation(
            "usage_embeddings", ["1m", "1h", "1d"], usage_groups
        ),
        "/v1/organization/costs": operation(
            "costs", ["1d"], ["project_id", "line_item", "model", "api_key_id"]
        ),
    }


def _ops_paths() -> dict[str, Any]:
    """Operational endpoints: no key needed."""

    def get(operation_id: str, ok: dict[str, Any]) -> dict[str, Any]:
        return {"get": {"operationId": operation_id, "security": [], "responses": {"200": ok}}}

    status = {"type": "object", "required": ["status"], "properties": {"status": {}}}
    paths = {
        "/healthz": get("healthz", _ok(status, "The process is alive")),
        "/readyz": get("readyz", _ok(status, "The database is reachable")),
        "/metrics": get(
            "metrics",
            {"description": "Prometheus text", "content": {"text/plain": {"schema": {}}}},
        ),
        "/openapi.json": get("openapi", _ok({"type": "object"}, "This document")),
    }
    paths["/readyz"]["get"]["responses"]["503"] = _error("The database is unreachable")
    return paths


def _components() -> dict[str, Any]:
    def obj(required: list[str], **properties: Schema) -> Schema:
        return {"type": "object", "required": required, "properties": properties}

    def page(item: str) -> Schema:
        return obj(
            ["object", "data", "first_id", "last_id", "has_more"],
            object={"const": "list"},
            data={"type": "array", "items": ref(item)},
            first_id=NULLABLE_STRING,
            last_id=NULLABLE_STRING,
            has_more={"type": "boolean"},
        )

    detail = obj(
        ["message", "type", "param", "code"],
        message={"type": "string"},
        type={"type": "string"},
        param=NULLABLE_STRING,
        code=NULLABLE_STRING,
    )
    bucket = obj(
        ["object", "start_time", "end_time", "results"],
        object={"const": "bucket"},
        start_time={"type": "integer"},
        end_time={"type": "integer"},
        results={"type": "array", "items": {"type": "object"}},
    )
    schemas = {
        "Error": obj(["error"], error=detail),
        "UsagePage": obj(
            ["object", "data", "has_more", "next_page"],
            object={"const": "page"},
            data={"type": "array", "items": bucket},
            has_more={"type": "boolean"},
            next_page=NULLABLE_STRING,
        ),
        "UpstreamObject": obj(["id"], id={"type": "string"}),
        "Embeddings": {"type": "object", "description": "The upstream's embeddings list"},
        "Response": obj(
            ["id", "object", "created_at", "status", "output", "error", "background"],
            id={"type": "string"},
            object={"const": "response"},
            created_at={"type": "integer"},
            model=NULLABLE_STRING,
            status={
                "enum": ["queued", "in_progress", "completed", "failed", "cancelled", "incomplete"]
            },
            background={"type": "boolean"},
            service_tier=NULLABLE_STRING,
            output={"type": "array"},
            error={"type": ["object", "null"]},
            usage={"type": ["object", "null"]},
            metadata={"type": ["object", "null"]},
        ),
        "ChatCompletion": obj(
            ["id", "object", "created", "model", "choices"],
            id={"type": "string"},
            object={"const": "chat.completion"},
            created={"type": "integer"},
            model={"type": "string"},
            choices={"type": "array"},
            service_tier=NULLABLE_STRING,
            metadata={"type": "object", "additionalProperties": {"type": "string"}},
            usage={"type": ["object", "null"]},
        ),
        "ChatCompletionList": page("ChatCompletion"),
        "ChatCompletionStoreMessage": obj(
            ["id", "role", "content", "name", "content_parts"],
            id={"type": "string"},
            role={"type": ["string", "null"]},
            content=NULLABLE_STRING,
            name={"description": "As the request gave it, else null"},
            content_parts={"type": ["array", "null"]},
        ),
        "ChatCompletionMessageList": page("ChatCompletionStoreMessage"),
        "ChatCompletionDeleted": obj(
            ["id", "object", "deleted"],
            id={"type": "string"},
            object={"const": "chat.completion.deleted"},
            deleted={"const": True},
        ),
        "Deleted": obj(
            ["id", "object", "deleted"],
            id={"type": "string"},
            object={"const": "response"},
            deleted={"const": True},
        ),
        "DeletedFile": obj(
            ["id", "object", "deleted"],
            id={"type": "string"},
            object={"const": "file"},
            deleted={"const": True},
        ),
        "File": obj(
            ["id", "object", "bytes", "created_at", "filename", "purpose", "status"],
            id={"type": "string"},
            object={"const": "file"},
            bytes={"type": "integer"},
            created_at={"type": "integer"},
            filename={"type": "string"},
            purpose={"enum": ["batch", "batch_output"]},
            status={"type": "string"},
            expires_at=TIMESTAMP,
        ),
        "FileList": page("File"),
        "InputItem": {
            "type": "object",
            "required": ["id", "type"],
            "properties": {"id": {"type": "string"}, "type": {"type": "string"}},
            "description": "An input item as OpenAI's Responses API defines it",
        },
        "InputItemList": page("InputItem"),
        "Batch": obj(
            ["id", "object", "endpoint", "input_file_id", "completion_window", "status"],
            id={"type": "string"},
            object={"const": "batch"},
            endpoint={"type": "string"},
            model={**NULLABLE_STRING, "description": "The model of its lines"},
            input_file_id=NULLABLE_STRING,
            completion_window={"type": "string"},
            status={
                "enum": [
                    "validating",
                    "failed",
                    "in_progress",
                    "finalizing",
                    "completed",
                    "expired",
                    "cancelling",
                    "cancelled",
                ]
            },
            output_file_id=NULLABLE_STRING,
            error_file_id=NULLABLE_STRING,
            errors={"type": ["object", "null"]},
            request_counts=obj(
                ["total", "completed", "failed"],
                total={"type": "integer"},
                completed={"type": "integer"},
                failed={"type": "integer"},
            ),
            created_at={"type": "integer"},
            metadata={"type": ["object", "null"]},
        ),
        "BatchList": page("Batch"),
        "Model": obj(
            ["id", "object", "created", "owned_by"],
            id={"type": "string"},
            object={"const": "model"},
            created={"type": "integer"},
            owned_by={"type": "string"},
        ),
        "ModelList": obj(
            ["object", "data"],
            object={"const": "list"},
            data={"type": "array", "items": ref("Model")},
        ),
    }
    return {
        "schemas": schemas,
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "`Authorization: Bearer <key>` from `tiergate keys create`",
            }
        },
    }


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The whole document; every ``/v1`` route of the gateway is in it."""
    limits = settings.limits
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tiergate",
            "version": "0.1.0",
            "description": (
                "An OpenAI-compatible gateway with a durable flex/batch tier. Errors are "
                '`{"error": {"message", "type", "param", "code"}}`. Bodies over '
                f"{limits.max_body_bytes} bytes and files over {limits.max_file_bytes} bytes "
                "get 413."
            ),
        },
        "security": [{"bearerAuth": []}],
        "paths": _paths(settings),
        "components": _components(),
    }
