"""The application factory: lifespan (models, workers, streams), middleware, errors, health.

The event loop never blocks: decoding and preprocessing run on a small thread pool, models run
on the backends' worker threads, and every await on a result has a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.weights import WeightsStore
from service.api import pose, streams
from service.api.deps import STATUS, Services, Unauthorized, error_response
from service.backends import BackendManager
from service.config import Settings
from service.errors import BackendUnavailableError, OverloadedError, ServeError
from service.metrics import Metrics
from service.schemas import ErrorResponse
from service.streams.manager import StreamManager

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 415, 422, 503, 504)
}


def create_app(settings: Settings, *, metrics: Metrics | None = None) -> FastAPI:
    """Build the app; models load, workers and streams start in its lifespan."""
    metrics = metrics or Metrics()
    backends = BackendManager(settings, WeightsStore(settings.model_dir), metrics)
    decode_pool = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="decode")
    stream_manager = StreamManager(
        settings.streams,
        backends,
        metrics,
        decode_pool,
        default_backend=settings.default_backend,
        inference_timeout_s=settings.request_timeout_s,
        min_person_score=settings.min_person_score,
    )
    svc = Services(settings, metrics, backends, stream_manager, decode_pool)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            for name in settings.preload:
                try:
                    await backends.acquire(name)
                except ServeError as exc:
                    logger.warning("backend %s not preloaded: %s", name, exc.message)
            stream_manager.start()
            yield
        finally:
            await stream_manager.close()
            backends.close()
            decode_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="poseserve",
        version="0.1.0",
        description="Real-time multi-person pose inference: COCO-17 keypoints per person.",
        lifespan=lifespan,
        responses=_ERROR_RESPONSES,
    )
    app.state.services = svc
    app.include_router(pose.router)
    app.include_router(streams.router)
    app.include_router(streams.ws_router)

    app.add_middleware(_Observe, metrics=metrics)

    @app.exception_handler(ServeError)
    async def serve_error(_: Request, exc: ServeError) -> JSONResponse:
        headers = None
        if isinstance(exc, OverloadedError | BackendUnavailableError) and exc.retry_after_s is not None:
            headers = {"Retry-After": str(max(1, math.ceil(min(exc.retry_after_s, 3600.0))))}
        elif isinstance(exc, Unauthorized):
            headers = {"WWW-Authenticate": "Bearer"}
        return error_response(STATUS.get(exc.code, 500), exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return error_response(422, "validation_error", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal", "internal error; see the server log")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        problems = [f"backend {name} (preload) is not loaded" for name in settings.preload if not backends.loaded(name)]
        problems += backends.problems()  # stages with dead workers, named
        if settings.redis_url and not await _redis_reachable(settings.redis_url):
            problems.append("redis is unreachable")
        if problems:
            return JSONResponse({"status": "not_ready", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class _Observe:
    """Counts and times HTTP requests by route and status. A plain ASGI middleware: Starlette's
    `BaseHTTPMiddleware` doubles the CPU cost of a cheap answer (a 503 refusal under a burst)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless the app answers

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests_total.labels(route=path, code=str(status)).inc()
            self.metrics.request_seconds.labels(route=path).observe(time.perf_counter() - started)


async def _redis_reachable(url: str, timeout_s: float = 0.5) -> bool:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout=timeout_s * 2))
    except (OSError, TimeoutError, aioredis.RedisError):
        return False
    finally:
        await client.aclose()
