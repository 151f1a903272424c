"""The OpenAPI document at ``/openapi.json``: what FastAPI writes for the control plane, plus the raw-ASGI
data plane, every error answer, the response bodies and the links between operations.

The document is a contract the fuzz test holds the gateway to (tests/test_fuzz_api.py, docs/fuzzing.md):
every status an operation may answer is listed, each error with OpenAI's envelope (FastAPI's default
422 is gone: validation errors are 400s here), and the bodies of the answers have schemas, so a
changed answer that clients would trip over fails CI. Links (create a key, then read it) let the
fuzzer chain calls as a client would.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter

from tokenway.api.messages import openapi_paths as messages_paths
from tokenway.api.responses import document as document_responses
from tokenway.embeddings.schema import EMBEDDINGS_ANSWER, EMBEDDINGS_REQUEST
from tokenway.protocol import CHAT_REQUEST, COMPLETION_REQUEST, SIMPLE_CHAT_REQUEST
from tokenway.stores.base import KeyRecord

_REF = "#/components/schemas/{model}"
_NULLABLE_STRING = {"anyOf": [{"type": "string"}, {"type": "null"}]}
_NULLABLE_INT = {"anyOf": [{"type": "integer"}, {"type": "null"}]}

# OpenAI's error envelope: what every error answer of the gateway is.
ERROR = {
    "type": "object", "required": ["error"], "title": "Error",
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"}, "param": _NULLABLE_STRING,
                       "code": _NULLABLE_STRING},
    }},
}
_USAGE = {
    "type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
                   "total_tokens": {"type": "integer"}},
}
_FINISH = {"anyOf": [{"type": "string"}, {"type": "null"}]}
_COMPLETION_BASE = {"id": {"type": "string"}, "created": {"type": "integer"}, "model": {"type": "string"},
                    "usage": {"anyOf": [_USAGE, {"type": "null"}]}}
CHAT_COMPLETION = {
    "type": "object", "title": "ChatCompletion", "required": ["id", "object", "created", "model", "choices"],
    "properties": {**_COMPLETION_BASE, "object": {"const": "chat.completion"}, "choices": {"type": "array", "items": {
        "type": "object", "required": ["index", "message", "finish_reason"],
        "properties": {"index": {"type": "integer"}, "finish_reason": _FINISH, "message": {
            "type": "object", "required": ["role"],
            "properties": {"role": {"const": "assistant"}, "content": _NULLABLE_STRING,
                           "tool_calls": {"type": "array", "items": {"type": "object"}}},
        }},
    }}},
}
TEXT_COMPLETION = {
    "type": "object", "title": "TextCompletion", "required": ["id", "object", "created", "model", "choices"],
    "properties": {**_COMPLETION_BASE, "object": {"const": "text_completion"}, "choices": {"type": "array", "items": {
        "type": "object", "required": ["index", "text", "finish_reason"],
        "properties": {"index": {"type": "integer"}, "text": {"type": "string"}, "finish_reason": _FINISH},
    }}},
}
SIMPLE_CHAT_ANSWER = {
    "type": "object", "title": "SimpleChatAnswer", "required": ["content", "cached", "elapsed_ms"],
    "properties": {"content": {"type": "string"}, "cached": {"type": "boolean"}, "elapsed_ms": {"type": "number"}},
}
_CHUNK = {
    "type": "object", "title": "Chunk", "required": ["id", "object", "created", "model", "choices"],
    "properties": {"id": {"type": "string"}, "object": {"enum": ["chat.completion.chunk", "text_completion"]},
                   "created": {"type": "integer"}, "model": {"type": "string"},
                   "usage": {"anyOf": [_USAGE, {"type": "null"}]}, "choices": {"type": "array", "items": {
                       "type": "object", "required": ["index"], "properties": {
                           "index": {"type": "integer"}, "finish_reason": _FINISH, "text": {"type": "string"},
                           "delta": {"type": "object", "properties": {
                               "role": {"const": "assistant"}, "content": _NULLABLE_STRING,
                               "tool_calls": {"type": "array", "items": {"type": "object"}}}}}}}},
}
_DELTA = {"type": "object", "required": ["delta"], "properties": {"delta": {"type": "string"}}}


def _events(*payloads: dict[str, Any]) -> dict[str, Any]:
    """``text/event-stream``: each event's ``data`` is ``[DONE]`` or JSON of one of ``payloads`` (an error
    in the middle of a stream is the error envelope, as OpenAI sends it)."""
    data = {"anyOf": [{"const": "[DONE]"}, {"type": "string", "contentMediaType": "application/json",
                                             "contentSchema": {"anyOf": [*payloads, ERROR]}}]}
    return {"description": "Server-sent events, ending `data: [DONE]`.",
            "schema": {"type": "object", "required": ["data"], "properties": {"data": data}}}

_DATA_PLANE_DOCS: list[tuple[str, str, TypeAdapter[Any], dict[str, Any], str]] = [
    ("/v1/chat/completions", "Create a chat completion", CHAT_REQUEST, CHAT_COMPLETION,
     "OpenAI-compatible. `stream: true` answers with server-sent events ending `data: [DONE]`."),
    ("/v1/completions", "Create a text completion", COMPLETION_REQUEST, TEXT_COMPLETION,
     "OpenAI-compatible legacy completions; streams like chat."),
    ("/chat", "Simple chat", SIMPLE_CHAT_REQUEST, SIMPLE_CHAT_ANSWER,
     'Answers `{"content", "cached", "elapsed_ms"}`; with `stream: true`, SSE events `{"delta"}` '
     "then that object, then `[DONE]`."),
    ("/v1/embeddings", "Create embeddings", EMBEDDINGS_REQUEST, EMBEDDINGS_ANSWER,
     "OpenAI-compatible; `encoding_format: base64` sends little-endian float32 bytes, and a `dimensions` below "
     "the model's size truncates each vector and makes it unit length again. docs/embeddings.md."),
]
_EXAMPLES = {"/v1/completions": {"prompt": "Say hello."}, "/v1/embeddings": {"input": "Say hello."}}
_DATA_PLANE_ERRORS = {
    "400": "Invalid request (the error names the field).", "401": "Missing or wrong API key.",
    "403": "The key may not use this model.", "404": "Unknown model (the error lists the known ones).",
    "408": "The body did not arrive in time.", "413": "Body over the size limit.",
    "429": "Rate limited or over budget; see Retry-After.", "502": "The backend failed.",
    "503": "No capacity, still starting or draining; see Retry-After.", "504": "The backend timed out.",
}

# The errors of the FastAPI side, by what an operation is: who may call it, what it names, what it does.
_ERROR_TEXT = {
    "400": "Invalid request (the error names the field).", "401": "No key, or a key this gateway does not know.",
    "403": "This key may not do that (the admin API needs the master key).",
    "404": "No such object, or another tenant's (the same answer).", "409": "The object's state does not allow it.",
    "413": "The upload is over jobs.max_file_bytes.", "429": "Too many jobs queued; see Retry-After.",
}
_BEARER = {"type": "http", "scheme": "bearer", "description": (
    "A virtual key (`Authorization: Bearer <key>` or `api-key: <key>`); the admin API needs the master key, "
    "/metrics the metrics token or the master key.")}
# /ui/session: the console's login takes the master key in its body, not as a bearer (its errors are its own)
_OPEN = {"/health", "/ready", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/ui/session"}


def _errors_for(path: str, method: str) -> list[str]:
    if path in _OPEN:
        return []
    if path == "/metrics":
        return ["401", "403"]
    codes = ["400", "401", "403", "404"]
    if method == "post" and (path.endswith("/cancel") or path.startswith("/v1/async/")):
        codes.append("409")  # a finished job or batch; an Idempotency-Key reused with another body
    if path.startswith("/v1/async/") and method == "post" and not path.endswith("/cancel"):
        codes.append("429")
    if path == "/v1/files" and method == "post":
        codes.append("413")
    return codes


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": _REF.format(
        model="Error")}}}}


def _schema_of(adapter: TypeAdapter[Any], components: dict[str, Any]) -> dict[str, Any]:
    body = adapter.json_schema(ref_template=_REF)
    components.update(body.pop("$defs", {}))
    return body


# ---- answers of the FastAPI side whose routes return plain dicts ---------------------------------

_BUDGET_USE = {"type": "object", "required": ["scope", "period", "limit_usd", "committed_usd", "remaining_usd"],
               "properties": {"scope": {"type": "string"}, "period": {"type": "string"},
                              "limit_usd": {"type": "number"}, "committed_usd": {"type": "number"},
                              "remaining_usd": {"type": "number"}}}


def _key_schemas(components: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A key as the admin API shows it (KeyRecord less its hash, so it follows the record), and at creation."""
    public = _schema_of(TypeAdapter(KeyRecord), components)
    public["properties"].pop("hash", None)
    public["required"] = sorted({"id", "hint", "revoked", "created_at", *public.get("required", [])} - {"hash"})
    public["title"] = "Key"
    created = {**public, "title": "CreatedKey", "required": [*public["required"], "key"],
               "properties": {**public["properties"], "key": {"type": "string"}}}
    budgets = {**public, "title": "KeyWithBudgets", "required": [*public["required"], "budgets"],
               "properties": {**public["properties"], "budgets": {"type": "array", "items": _BUDGET_USE}}}
    return {"Key": public, "CreatedKey": created, "KeyWithBudgets": budgets}


def _page(item: str) -> dict[str, Any]:
    return {"type": "object", "required": ["object", "data", "has_more", "first_id", "last_id"], "properties": {
        "object": {"const": "list"}, "data": {"type": "array", "items": {"$ref": _REF.format(model=item)}},
        "has_more": {"type": "boolean"}, "first_id": _NULLABLE_STRING, "last_id": _NULLABLE_STRING}}


def _with_owner(item: str) -> dict[str, Any]:
    """What the admin API answers for any tenant's object: the object and the key id that owns it."""
    return {"allOf": [{"$ref": _REF.format(model=item)}, {
        "type": "object", "required": ["owner"], "properties": {"owner": {"type": "string"}}}]}


_MODEL = {"type": "object", "title": "Model", "required": ["id", "object", "created", "owned_by"], "properties": {
    "id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
    "owned_by": {"type": "string"}}}
_JOB = {"type": "object", "title": "Job", "required": [
    "id", "object", "status", "endpoint", "model", "created_at", "started_at", "finished_at", "attempts", "result",
    "error", "timings"], "properties": {
    "id": {"type": "string"}, "object": {"const": "async.job"},
    "status": {"enum": ["queued", "running", "succeeded", "failed", "cancelled", "expired"]},
    "endpoint": {"type": "string"}, "model": _NULLABLE_STRING, "created_at": {"type": "integer"},
    "started_at": _NULLABLE_INT, "finished_at": _NULLABLE_INT, "attempts": {"type": "integer"},
    "result": {"anyOf": [{"type": "object"}, {"type": "null"}]},
    "error": {"anyOf": [{"type": "object"}, {"type": "null"}]}, "timings": {"type": "object"}}}
_FILE = {"type": "object", "title": "File", "required": ["id", "object", "bytes", "created_at", "filename", "purpose"],
         "properties": {"id": {"type": "string"}, "object": {"const": "file"}, "bytes": {"type": "integer"},
                        "created_at": {"type": "integer"}, "filename": {"type": "string"},
                        "purpose": {"type": "string"}}}
_BATCH = {"type": "object", "title": "Batch", "required": [
    "id", "object", "endpoint", "input_file_id", "completion_window", "status", "created_at", "request_counts"],
    "properties": {
    "id": {"type": "string"}, "object": {"const": "batch"}, "endpoint": {"type": "string"},
    "input_file_id": {"type": "string"}, "completion_window": {"type": "string"},
    "status": {"enum": ["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                        "cancelled"]},
    "output_file_id": _NULLABLE_STRING, "error_file_id": _NULLABLE_STRING, "created_at": {"type": "integer"},
    "request_counts": {"type": "object", "required": ["total", "completed", "failed"], "properties": {
        "total": {"type": "integer"}, "completed": {"type": "integer"}, "failed": {"type": "integer"}}}}}
_DELETED_FILE = {"type": "object", "required": ["id", "object", "deleted"], "properties": {
    "id": {"type": "string"}, "object": {"const": "file"}, "deleted": {"const": True}}}

# (method, path) -> the answer's schema, by component name or inline.
_ANSWERS: dict[tuple[str, str], str | dict[str, Any]] = {
    ("get", "/v1/models"): {"type": "object", "required": ["object", "data"], "properties": {
        "object": {"const": "list"}, "data": {"type": "array", "items": {"$ref": _REF.format(model="Model")}}}},
    ("get", "/v1/models/{model}"): "Model",
    ("post", "/admin/keys"): "CreatedKey",
    ("get", "/admin/keys"): {"type": "object", "required": ["data"], "properties": {
        "data": {"type": "array", "items": {"$ref": _REF.format(model="Key")}}}},
    ("get", "/admin/keys/{key_id}"): "KeyWithBudgets",
    ("patch", "/admin/keys/{key_id}"): "Key",
    ("delete", "/admin/keys/{key_id}"): "Key",
    ("post", "/v1/async/chat/completions"): "Job", ("post", "/v1/async/completions"): "Job",
    ("get", "/v1/async"): _page("Job"), ("get", "/v1/async/{job_id}"): "Job",
    ("post", "/v1/async/{job_id}/cancel"): "Job",
    ("post", "/v1/files"): "File", ("get", "/v1/files"): _page("File"), ("get", "/v1/files/{file_id}"): "File",
    ("delete", "/v1/files/{file_id}"): _DELETED_FILE,
    ("post", "/v1/batches"): "Batch", ("get", "/v1/batches"): _page("Batch"),
    ("get", "/v1/batches/{batch_id}"): "Batch", ("post", "/v1/batches/{batch_id}/cancel"): "Batch",
    ("post", "/admin/jobs/{job_id}/cancel"): _with_owner("Job"),
    ("post", "/admin/batches/{batch_id}/cancel"): _with_owner("Batch"),
}

_BATCH_LINE = ('{"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": '
               '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}}\n')

# Request bodies the routes read themselves (multipart, or JSON checked in the service).
_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/files"): {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file", "purpose"], "properties": {
            "file": {"type": "string", "format": "binary"}, "purpose": {"const": "batch"}}}, "example": {
        "purpose": "batch", "file": _BATCH_LINE}}}},
    ("post", "/v1/batches"): {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["input_file_id", "endpoint", "completion_window"], "properties": {
            "input_file_id": {"type": "string"},
            "endpoint": {"enum": ["/v1/chat/completions", "/v1/completions"]},
            "completion_window": {"type": "string", "pattern": "^[1-9][0-9]*[smhd]$"},
            "metadata": {"anyOf": [{"type": "object", "additionalProperties": {"type": "string"}},
                                   {"type": "null"}]}}}}}},
}

# Links from an answer to the next operations: (method, path of the answer) -> [(link name, method and
# path of the next operation, what of it the answer fills)], as a client chains them.
_ID = "$response.body#/id"
_LINKS: dict[tuple[str, str], list[tuple[str, str, str, dict[str, Any]]]] = {
    ("post", "/admin/keys"): [
        ("GetKey", "get", "/admin/keys/{key_id}", {"parameters": {"key_id": _ID}}),
        ("UpdateKey", "patch", "/admin/keys/{key_id}", {"parameters": {"key_id": _ID}}),
        ("RevokeKey", "delete", "/admin/keys/{key_id}", {"parameters": {"key_id": _ID}})],
    ("post", "/v1/files"): [
        ("GetFile", "get", "/v1/files/{file_id}", {"parameters": {"file_id": _ID}}),
        ("GetFileContent", "get", "/v1/files/{file_id}/content", {"parameters": {"file_id": _ID}}),
        ("DeleteFile", "delete", "/v1/files/{file_id}", {"parameters": {"file_id": _ID}}),
        ("BatchFile", "post", "/v1/batches", {"requestBody": {
            "input_file_id": _ID, "endpoint": "/v1/chat/completions", "completion_window": "24h"}})],
    ("post", "/v1/batches"): [
        ("GetBatch", "get", "/v1/batches/{batch_id}", {"parameters": {"batch_id": _ID}}),
        ("CancelBatch", "post", "/v1/batches/{batch_id}/cancel", {"parameters": {"batch_id": _ID}}),
        ("AdminCancelBatch", "post", "/admin/batches/{batch_id}/cancel", {"parameters": {"batch_id": _ID}})],
    **{("post", submit): [
        ("GetJob", "get", "/v1/async/{job_id}", {"parameters": {"job_id": _ID}}),
        ("CancelJob", "post", "/v1/async/{job_id}/cancel", {"parameters": {"job_id": _ID}}),
        ("AdminCancelJob", "post", "/admin/jobs/{job_id}/cancel", {"parameters": {"job_id": _ID}})]
       for submit in ("/v1/async/chat/completions", "/v1/async/completions")},
}


def openapi_document(app: FastAPI, keyed: bool = False, metrics_keyed: bool = False) -> dict[str, Any]:
    """The whole document, built once per app. It is served without a key, so it names no configured
    model (``GET /v1/models`` needs one): the examples use a placeholder. ``keyed``: calls need a key
    (a master key is set); ``metrics_keyed``: ``/metrics`` needs its token."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422, which this gateway never sends
        components.pop(name, None)
    components.update({"Error": ERROR, **_key_schemas(components), "Model": _MODEL, "Job": _JOB, "File": _FILE,
                       "Batch": _BATCH})
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            _complete(path, method, operation)
    for path, summary, adapter, answer, description in _DATA_PLANE_DOCS:
        schema["paths"][path] = {"post": _data_plane_operation(path, summary, adapter, answer, description,
                                                               components)}
    schema["paths"].update(messages_paths(components))
    document_responses(schema["paths"], components,
                       {code: _error_response(text) for code, text in _DATA_PLANE_ERRORS.items()})
    _link(schema["paths"])
    if keyed or metrics_keyed:
        schema["components"]["securitySchemes"] = {"bearer": _BEARER}
        for path, operations in schema["paths"].items():
            if (keyed and path not in _OPEN and path != "/metrics") or (metrics_keyed and path == "/metrics"):
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
    app.openapi_schema = schema
    return schema


def _complete(path: str, method: str, operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    responses.pop("422", None)
    for code in _errors_for(path, method):
        responses.setdefault(code, _error_response(_ERROR_TEXT.get(code, "Error.")))
    answer = _ANSWERS.get((method, path))
    if answer is not None:
        ok = next(code for code in responses if code.startswith("2"))
        body = {"$ref": _REF.format(model=answer)} if isinstance(answer, str) else answer
        responses[ok]["content"] = {"application/json": {"schema": body}}
    if (method, path) == ("get", "/v1/files/{file_id}/content"):
        responses["200"]["content"] = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    if (method, path) in _BODIES:
        operation["requestBody"] = _BODIES[(method, path)]


def _data_plane_operation(
    path: str, summary: str, adapter: TypeAdapter[Any], answer: dict[str, Any], description: str,
    components: dict[str, Any],
) -> dict[str, Any]:
    body = _schema_of(adapter, components)
    name = body.get("title", path.strip("/").replace("/", "_"))
    components[name] = body
    components[answer["title"]] = answer
    example: dict[str, Any] = {"model": "gpt-4o-mini"}
    example.update(_EXAMPLES.get(path, {"messages": [{"role": "user", "content": "Say hello."}]}))
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": _REF.format(model=answer["title"])}}}
    if path != "/v1/embeddings":  # never streamed
        content["text/event-stream"] = _events(_DELTA, answer) if path == "/chat" else _events(_CHUNK)
    responses: dict[str, Any] = {"200": {
        "description": "The answer (JSON), or an SSE stream when `stream` is true.", "content": content,
    }}
    responses.update({code: _error_response(text) for code, text in _DATA_PLANE_ERRORS.items()})
    return {
        "tags": ["openai"], "summary": summary, "description": description,
        "operationId": re.sub(r"\W+", "_", f"create{path}").strip("_"),
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": _REF.format(model=name)}, "example": example}}},
        "responses": responses,
    }


def _link(paths: dict[str, Any]) -> None:
    for (method, path), links in _LINKS.items():
        operation = paths.get(path, {}).get(method)
        if operation is None:
            continue
        ok = next(code for code in operation["responses"] if code.startswith("2"))
        target_links = operation["responses"][ok].setdefault("links", {})
        for name, target_method, target_path, fills in links:
            target = paths.get(target_path, {}).get(target_method)
            if target is not None:
                target_links[name] = {"operationId": target["operationId"], **fills}
