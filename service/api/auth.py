"""API-key admission at the door: refuse before routing, before a body is read or a socket accepted.

`AuthMiddleware` looks the path up in `route_scopes` (every /v1 route and the scope it needs;
another /v1 path needs a valid key of any scope), then answers 401, 403 or 429 itself, or lets the
request through with its key in `scope["state"]["api_key"]` for the routes' `require_scope`
dependencies (their own declaration, and the check of last resort).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as AsgiScope
from starlette.websockets import WebSocket

from service.api.deps import STATUS, authorize, error_response
from service.auth import Keyring, Scope
from service.config import AuthSettings
from service.errors import AuthRefusal, RateLimited

__all__ = ["ANY_KEY", "REFUSED_ROUTE", "AuthMiddleware", "reload_on_sighup", "route_scopes"]

logger = logging.getLogger(__name__)

ANY_KEY = "any"  # a valid key, whatever its scopes
REFUSED_ROUTE = "poseserve.refused_route"  # ASGI scope key: the route a refused request was for (metrics)

_CLOSE_POLICY = 1008
_CLOSE_TRY_AGAIN_LATER = 1013


def route_scopes(settings: AuthSettings) -> dict[str, Scope | str]:
    """Route path -> the scope it needs (or ANY_KEY); paths not listed outside /v1 are open."""
    table: dict[str, Scope | str] = {
        "/v1/pose": "pose",
        "/v1/backends": "pose",
        "/v1/streams": "streams",
        "/v1/streams/{stream_id}": "streams",
        "/v1/streams/{stream_id}/ws": "streams",
        "/v1/streams/{stream_id}/frame.jpg": "streams",
    }
    if settings.protect_health:
        table |= {"/healthz": ANY_KEY, "/readyz": ANY_KEY}
    if settings.protect_metrics:
        table["/metrics"] = ANY_KEY
    return table


@dataclass(frozen=True)
class _Rule:
    path: str
    pattern: re.Pattern[str]
    scope: Scope | None


def _rule(path: str, needs: Scope | str) -> _Rule:
    """A `{param}` matches one path segment, as in the router."""
    pattern = re.compile("^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(path)) + "$")
    return _Rule(path, pattern, None if needs == ANY_KEY else cast(Scope, needs))


def _route_path(scope: AsgiScope) -> str:
    """The path the router matches: `path` without the `root_path` prefix."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root + "/"):
        return path[len(root) :]
    return path


class AuthMiddleware:
    """Pure ASGI: checks keys of HTTP requests and WebSocket handshakes against `route_scopes`."""

    def __init__(self, app: ASGIApp, keyring: Keyring, settings: AuthSettings) -> None:
        self.app = app
        self.keyring = keyring
        self.rules = tuple(_rule(path, needs) for path, needs in route_scopes(settings).items())
        self.unlisted_v1 = _Rule("unmatched", re.compile("^/v1(/.*)?$"), None)  # still needs a key

    def _rule(self, path: str) -> _Rule | None:
        for rule in (*self.rules, self.unlisted_v1):
            if rule.pattern.match(path):
                return rule
        return None

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.keyring.enabled:
            await self.app(scope, receive, send)
            return
        rule = self._rule(_route_path(scope))
        if rule is None:
            await self.app(scope, receive, send)
            return
        try:
            key = authorize(self.keyring, HTTPConnection(scope), rule.scope)
        except AuthRefusal as refusal:
            scope[REFUSED_ROUTE] = rule.path
            await self._refuse(scope, receive, send, refusal)
            return
        scope.setdefault("state", {})["api_key"] = key
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: AsgiScope, receive: Receive, send: Send, refusal: AuthRefusal) -> None:
        response = error_response(STATUS[refusal.code], refusal.code, refusal.message, refusal.headers)
        if scope["type"] == "http":
            await response(scope, receive, send)
            return
        websocket = WebSocket(scope, receive, send)
        if "websocket.http.response" in scope.get("extensions", {}):
            await websocket.send_denial_response(response)  # the client sees the HTTP status and headers
        else:
            code = _CLOSE_TRY_AGAIN_LATER if isinstance(refusal, RateLimited) else _CLOSE_POLICY
            await websocket.close(code=code, reason=refusal.message[:120])


@contextlib.contextmanager
def reload_on_sighup(keyring: Keyring) -> Iterator[None]:
    """While open (on the event loop's thread), SIGHUP rereads the key file on a worker thread."""
    if keyring.key_file is None:
        yield
        return
    loop = asyncio.get_running_loop()

    def reload() -> None:
        try:
            keyring.reload()
        except Exception:  # reload() logs what it expects; anything else must not go unseen
            logger.exception("reloading API keys from %s failed", keyring.key_file)

    def on_sighup() -> None:
        logger.info("SIGHUP: reloading API keys from %s", keyring.key_file)
        loop.run_in_executor(None, reload)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
