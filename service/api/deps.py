"""What every route needs: the app's services, API-key auth, the JSON error shape."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fastapi import Request, WebSocket
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

from service.auth import ApiKey, Keyring, Scope
from service.backends import BackendManager
from service.config import Settings
from service.distributed.cameras import Cameras
from service.distributed.transport import ImageJobs
from service.errors import (
    AuthRefusal,
    BackendUnavailableError,
    Forbidden,
    NoFrameError,
    OverloadedError,
    RateLimited,
    ServeError,
    Unauthorized,
)
from service.metrics import Metrics
from service.streams.manager import StreamManager

__all__ = [
    "STATUS",
    "Services",
    "authorize",
    "error_response",
    "require_scope",
    "serve_error_response",
    "services",
    "websocket_key_ok",
]

logger = logging.getLogger(__name__)

STATUS = {
    "invalid_image": 400,
    "invalid_stream_url": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "preview_disabled": 403,
    "too_large": 413,
    "unsupported_media_type": 415,
    "unknown_backend": 404,
    "unknown_stream": 404,
    "weights_missing": 409,
    "duplicate_stream": 409,
    "too_many_streams": 409,
    "rate_limited": 429,
    "overloaded": 503,
    "backend_unavailable": 503,
    "no_frame": 503,
    "timeout": 504,
}


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    backends: BackendManager
    streams: StreamManager
    decode_pool: ThreadPoolExecutor
    keyring: Keyring
    jobs: ImageJobs
    cameras: Cameras
    """`streams` behind `/v1/streams`, or the Redis stream registry of a gateway"""
    inflight: int = 0


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def serve_error_response(exc: ServeError) -> JSONResponse:
    """The answer to a `ServeError`: its status and code, `Retry-After` on a retryable refusal."""
    headers = None
    if isinstance(exc, OverloadedError | BackendUnavailableError | NoFrameError) and exc.retry_after_s is not None:
        headers = {"Retry-After": str(max(1, math.ceil(min(exc.retry_after_s, 3600.0))))}
    elif isinstance(exc, AuthRefusal):
        headers = exc.headers
    return error_response(STATUS.get(exc.code, 500), exc.code, exc.message, headers)


async def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def _bearer(authorization: str) -> str:
    return authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""


def _given_key(conn: HTTPConnection) -> str:
    """`Authorization: Bearer KEY`, `X-API-Key: KEY`, or (WebSockets only: browsers cannot set headers) `?token=KEY`."""
    given = _bearer(conn.headers.get("authorization", "")) or conn.headers.get("x-api-key", "")
    if not given and conn.scope["type"] == "websocket":
        given = conn.query_params.get("token", "")
    return given


def authorize(keyring: Keyring, conn: HTTPConnection, scope: Scope | None) -> ApiKey:
    """The caller's key, if it is valid, holds `scope` (None: any) and is within its rate limit.

    Raises Unauthorized (401), Forbidden (403) or RateLimited (429, a token is spent only when
    admitted). Reads headers and the query string only, never the body.
    """
    key = keyring.authenticate(_given_key(conn))
    if key is None:
        websocket = conn.scope["type"] == "websocket"
        where = "Authorization: Bearer KEY or X-API-Key" + (" or ?token=KEY" if websocket else "")
        raise Unauthorized(f"missing or invalid API key ({where})", {"WWW-Authenticate": "Bearer"})
    _check_scope(key, scope)
    wait_s = keyring.admit(key)
    if wait_s > 0:
        retry_after_s = max(1, math.ceil(wait_s))
        logger.debug("key %s rate-limited for %.3f s", key.name, wait_s)
        raise RateLimited(
            f"API key {key.name!r} is over its rate limit of {key.rate}; retry in {retry_after_s} s",
            {"Retry-After": str(retry_after_s)},
        )
    return key


def _check_scope(key: ApiKey, scope: Scope | None) -> None:
    if scope is not None and scope not in key.scopes:
        logger.debug("key %s refused: no %s scope", key.name, scope)
        raise Forbidden(
            f"API key {key.name!r} lacks the {scope!r} scope",
            {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
        )


def _granted(conn: HTTPConnection) -> ApiKey | None:
    """The key `service.api.auth.AuthMiddleware` admitted this request with (already charged)."""
    key: ApiKey | None = conn.scope.get("state", {}).get("api_key")
    return key


def _check(conn: HTTPConnection, scope: Scope | None) -> None:
    keyring: Keyring = conn.app.state.services.keyring
    if not keyring.enabled:
        return
    key = _granted(conn)
    if key is None:  # a route the middleware's table does not guard: check here (body already read)
        conn.scope.setdefault("state", {})["api_key"] = authorize(keyring, conn, scope)
    else:
        _check_scope(key, scope)


@functools.cache
def require_scope(scope: Scope | None) -> Callable[[Request], Awaitable[None]]:
    """A route dependency: the request's key must hold `scope` (None: any valid key).

    `AuthMiddleware` normally refused the request already, before its body was read; this
    dependency is the route's own declaration and the check of last resort.
    """

    async def dependency(request: Request) -> None:
        _check(request, scope)

    return dependency


def websocket_key_ok(websocket: WebSocket, scope: Scope = "streams") -> bool:
    """Whether the WebSocket's key (header or `?token=`) holds `scope`; True when auth is off."""
    try:
        _check(websocket, scope)
    except AuthRefusal:
        return False
    return True
