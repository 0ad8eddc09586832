"""Admission of `POST /v1/pose` at the edge of the app, before routing.

Under a burst most requests are refused, and the cost of a refusal is what the event loop can
refuse per second: routing, dependency injection and the exception handlers cost more than the
decision itself. This ASGI middleware (inside authentication, so keys are checked first and
counted by route) asks the request's backend for a slot as soon as the headers are in. A refusal
is answered here (`503 overloaded` + `Retry-After`, the same body as the route's); an admitted
request carries its reserved slot (`SLOT` in the ASGI scope) to the route, which uses it instead
of asking again. A backend not loaded yet, or an unknown one, passes through: the route loads it
or answers 404. Whatever happens after, the slot is released unless the image was queued in it.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.auth import REFUSED_ROUTE
from service.api.deps import Services, serve_error_response
from service.errors import ServeError

__all__ = ["SLOT", "ShedOverload"]

SLOT = "poseserve.slot"
"""ASGI scope key: the `Ticket` admission reserved for this request"""

POSE_PATH = "/v1/pose"


class ShedOverload:
    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app, self.services = app, services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != POSE_PATH:
            await self.app(scope, receive, send)
            return
        backend = self.services.backends.loaded(_backend_name(scope) or self.services.settings.default_backend)
        if backend is None:
            await self.app(scope, receive, send)
            return
        try:
            ticket = backend.admit()
        except ServeError as refusal:
            scope[REFUSED_ROUTE] = POSE_PATH
            await serve_error_response(refusal)(scope, receive, send)
            return
        scope[SLOT] = ticket
        try:
            await self.app(scope, receive, send)
        finally:
            ticket.release()  # a no-op once the image was queued in its slot


def _backend_name(scope: Scope) -> str | None:
    query = scope.get("query_string", b"")
    if b"backend=" not in query:
        return None
    values = parse_qs(query.decode("latin-1")).get("backend")
    return values[-1] if values else None
