"""What every route needs: the app's services, API-key auth, the JSON error shape."""

from __future__ import annotations

import hmac
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fastapi import Request, WebSocket
from fastapi.responses import JSONResponse

from service.backends import BackendManager
from service.config import Settings
from service.errors import ServeError
from service.metrics import Metrics
from service.streams.manager import StreamManager

__all__ = [
    "STATUS",
    "Services",
    "Unauthorized",
    "error_response",
    "require_key",
    "services",
    "websocket_key_ok",
]

STATUS = {
    "invalid_image": 400,
    "invalid_stream_url": 400,
    "unauthorized": 401,
    "too_large": 413,
    "unsupported_media_type": 415,
    "unknown_backend": 404,
    "unknown_stream": 404,
    "weights_missing": 409,
    "duplicate_stream": 409,
    "too_many_streams": 409,
    "overloaded": 503,
    "backend_unavailable": 503,
    "timeout": 504,
}


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    backends: BackendManager
    streams: StreamManager
    decode_pool: ThreadPoolExecutor
    inflight: int = 0


class Unauthorized(ServeError):
    code = "unauthorized"


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


async def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def _key_ok(keys: tuple[str, ...], given: str) -> bool:
    return any(hmac.compare_digest(given.encode(), key.encode()) for key in keys)


def _bearer(authorization: str) -> str:
    return authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""


async def require_key(request: Request) -> None:
    """When API keys are configured: `Authorization: Bearer KEY` or `X-API-Key: KEY`."""
    keys = (await services(request)).settings.api_keys
    if not keys:
        return
    given = _bearer(request.headers.get("authorization", "")) or request.headers.get("x-api-key", "")
    if not _key_ok(keys, given):
        raise Unauthorized("missing or invalid API key (Authorization: Bearer KEY or X-API-Key)")


def websocket_key_ok(websocket: WebSocket) -> bool:
    """WebSockets also accept the key as `?token=KEY` (browsers cannot set headers)."""
    keys: tuple[str, ...] = websocket.app.state.services.settings.api_keys
    if not keys:
        return True
    given = (
        _bearer(websocket.headers.get("authorization", ""))
        or websocket.headers.get("x-api-key", "")
        or websocket.query_params.get("token", "")
    )
    return _key_ok(keys, given)
