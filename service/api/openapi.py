"""What the OpenAPI document says beyond the pydantic models: bodies read by hand, error answers.

Each route lists the error codes it can answer (`error_responses`); a status with several codes
names them all in its description. `POST /v1/pose` reads its body itself (a byte cap before
parsing), so its request body is declared here rather than by a parameter. FastAPI's own 422
answer (its `HTTPValidationError` body, on every route with a parameter) is removed: validation
errors answer `ErrorResponse`, and only routes that can fail validation declare 422.
"""

from __future__ import annotations

import json
from typing import Any

from service.api.deps import STATUS
from service.imaging import ACCEPTED_MEDIA_TYPES
from service.schemas import ErrorResponse

__all__ = [
    "AUTH_ERRORS",
    "HTML_ANSWER",
    "JPEG_ANSWER",
    "POSE_REQUEST_BODY",
    "error_responses",
    "with_security",
    "without_default_validation_answers",
]

AUTH_ERRORS = ("unauthorized", "forbidden", "rate_limited")
"""What every `/v1` route can answer when API keys are configured (401, 403, 429)."""

_VALIDATION = "validation_error"
_HEADERS: dict[str, dict[str, Any]] = {
    "overloaded": {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}},
    "backend_unavailable": {
        "Retry-After": {
            "description": "seconds to wait before retrying (when it may succeed)",
            "schema": {"type": "integer"},
        }
    },
    "rate_limited": {
        "Retry-After": {"description": "seconds until the key may call again", "schema": {"type": "integer"}}
    },
    "no_frame": {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}},
    "unauthorized": {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
}

_BINARY = {"type": "string", "format": "binary"}

POSE_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "a JPEG, PNG, WebP or BMP image: a multipart file field `image`, or the raw bytes",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {**_BINARY, "description": "the image file (sent with a filename)"}},
                    "required": ["image"],
                },
                "encoding": {"image": {"contentType": ", ".join(sorted(ACCEPTED_MEDIA_TYPES))}},
            },
            **{media_type: {"schema": _BINARY} for media_type in sorted(ACCEPTED_MEDIA_TYPES)},
        },
    }
}


JPEG_ANSWER: dict[str, Any] = {
    "description": "a JPEG image",
    "content": {"image/jpeg": {"schema": _BINARY}},
    "headers": {"Cache-Control": {"description": "`no-store`", "schema": {"type": "string"}}},
}

HTML_ANSWER: dict[str, Any] = {"description": "an HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}


def error_responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """The `responses` entry of a route that can answer with these error codes (`STATUS` keys or
    `validation_error`): one `ErrorResponse` answer per status, its codes in the description."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(422 if code == _VALIDATION else STATUS[code], []).append(code)
    responses: dict[int | str, dict[str, Any]] = {}
    for status, status_codes in sorted(by_status.items()):
        entry: dict[str, Any] = {"model": ErrorResponse, "description": "error code: " + ", ".join(status_codes)}
        headers = {name: spec for code in status_codes for name, spec in _HEADERS.get(code, {}).items()}
        if headers:
            entry["headers"] = headers
        responses[status] = entry
    return responses


SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key, `Authorization: Bearer KEY`; its scopes (`pose`, `streams`) decide the routes",
    },
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "the same API key"},
}


def with_security(document: dict[str, Any], guarded: dict[str, str], *, keys_required: bool) -> dict[str, Any]:
    """`document` with the API-key schemes and, on every operation of a `guarded` path (path ->
    scope), the key it needs: required when keys are configured, else optional (`{}`)."""
    document.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    for path, path_item in document.get("paths", {}).items():
        scope = guarded.get(path)
        if scope is None:
            continue
        for operation in path_item.values():
            operation["security"] = [{"bearer": []}, {"apiKey": []}, *([] if keys_required else [{}])]
            if keys_required:
                note = f"Needs an API key with the `{scope}` scope." if scope in ("pose", "streams") else ""
                note = note or "Needs a valid API key."
                operation["description"] = f"{operation.get('description', '')}\n\n{note}".strip()
    return document


def without_default_validation_answers(document: dict[str, Any]) -> dict[str, Any]:
    """`document` (FastAPI's OpenAPI dict) without the 422 answers FastAPI adds by itself, and
    without their schemas once nothing refers to them."""
    default = {"$ref": "#/components/schemas/HTTPValidationError"}
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            answer = operation.get("responses", {}).get("422", {})
            if answer.get("content", {}).get("application/json", {}).get("schema") == default:
                del operation["responses"]["422"]
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        others = {key: value for key, value in document.items() if key != "components"}
        used = json.dumps([others, {k: v for k, v in schemas.items() if k != name}])
        if f'"#/components/schemas/{name}"' not in used:
            schemas.pop(name, None)
    return document
