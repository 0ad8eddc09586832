"""Admission of `POST /v1/pose` at the edge of the app, before routing.

Under a burst most requests are refused, and the cost of a refusal is what the event loop can
refuse per second: routing, dependency injection and the exception handlers cost more than the
decision itself. This ASGI middleware (inside authentication, so keys are checked first and
counted by route) asks the request's backend for a slot as soon as the headers are in. A refusal
is answered here (`503 overloaded` + `Retry-After`, the same body as the route's); an admitted
request carries its reserved slot (`SLOT` in the ASGI scope) to the route, which uses it instead
of asking again. A backend not loaded yet, or an unknown one, passes through: the route loads it
or answers 404. Whatever happens after, the slot is released unless the image was queued in it.

Refusals are paced (`RefusalPacer`): once `max_refusal_burst` refusals went at once, and while they
keep coming faster than `max_refusals_per_s`, a refusal is answered when the rate allows, at most
`max_refusal_delay_ms` later. A burst of new clients is still refused at once (200 clients x 5
requests: about 950 refusals, within the burst). Clients that retry a refusal at once,
without waiting its Retry-After, otherwise turn the spare capacity into refusals. On a 2-core CPU
running a model at 16 img/s, eight such clients (`wrk -c8`) drew about 2,500 refusals a second, and
answering them halved what the server answered. Waiting costs no CPU: the refusal sleeps without
reading the body, and no slot is held.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.auth import REFUSED_ROUTE
from service.api.deps import Services, serve_error_response
from service.errors import ServeError

__all__ = ["SLOT", "RefusalPacer", "ShedOverload"]

SLOT = "poseserve.slot"
"""ASGI scope key: the `Ticket` admission reserved for this request"""

POSE_PATH = "/v1/pose"


class RefusalPacer:
    """A token bucket of refusals: `burst` at once, refilled at `rate` a second. A refusal beyond it
    waits until the bucket allows it, at most `max_delay_s` (one that would wait longer waits that
    long and reserves nothing). With `max_waiting` refusals already waiting, or `rate` 0, the
    answer goes at once. The clock is injected (tests)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        max_delay_s: float,
        max_waiting: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate, self.burst, self.max_delay_s, self.max_waiting = rate, burst, max_delay_s, max_waiting
        self._clock = clock
        self._tokens, self._at = float(burst), clock()
        self.waiting = 0

    def delay_s(self) -> float:
        """How long to hold the refusal arriving now before answering it (0: at once)."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        if self.waiting >= self.max_waiting:
            return 0.0
        wait = (1.0 - self._tokens) / self.rate
        if wait > self.max_delay_s:
            return self.max_delay_s
        self._tokens -= 1.0
        return wait

    async def pace(self) -> None:
        if (delay := self.delay_s()) > 0:
            self.waiting += 1
            try:
                await asyncio.sleep(delay)
            finally:
                self.waiting -= 1


class ShedOverload:
    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app, self.services = app, services
        settings = services.settings
        self.pacer = RefusalPacer(
            settings.max_refusals_per_s,
            settings.max_refusal_burst,
            settings.max_refusal_delay_ms / 1000.0,
            settings.max_inflight_requests,
        )

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
            await self.pacer.pace()
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
