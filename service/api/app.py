"""The application factory: lifespan (models, workers, streams), middleware, errors, health.

The event loop never blocks: decoding and preprocessing run on a small thread pool, models run
on the backends' worker threads, and every await on a result has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.weights import WeightsStore
from service.api import pose, streams, viewer
from service.api.auth import REFUSED_ROUTE, AuthMiddleware, reload_on_sighup, route_scopes
from service.api.deps import Services, error_response, serve_error_response
from service.api.limits import CapBody
from service.api.openapi import with_security, without_default_validation_answers
from service.api.shed import ShedOverload
from service.auth import Keyring
from service.backends import BackendManager
from service.config import AuthSettings, Settings
from service.distributed import local as local_parts
from service.distributed.cameras import Cameras, LocalCameras, RemoteCameras
from service.distributed.gateway import RedisJobs
from service.errors import ServeError
from service.gpu import register_gpu_metrics
from service.metrics import Metrics
from service.schemas import Readiness
from service.streams.preview import FramePreviews

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def create_app(settings: Settings, *, metrics: Metrics | None = None, reload_keys_on_sighup: bool = False) -> FastAPI:
    """Build the app; models load, workers and streams start in its lifespan.

    `reload_keys_on_sighup` (the server process): SIGHUP rereads the API key file while it runs.
    """
    metrics = metrics or Metrics()
    register_gpu_metrics(metrics.registry)  # only where NVML finds a GPU
    keyring = Keyring.from_settings(settings)  # a malformed key entry or key file fails here
    backends = BackendManager(settings, WeightsStore(settings.model_dir), metrics)
    decode_pool = local_parts.decode_pool(settings)
    stream_manager = local_parts.stream_manager(settings, backends, metrics, decode_pool)
    remote = RedisJobs(settings, metrics) if settings.redis_url else None
    local = local_parts.in_process_jobs(settings, backends, decode_pool)
    cameras: Cameras = LocalCameras(stream_manager, FramePreviews(decode_pool), settings.streams)
    if remote is not None:
        cameras = RemoteCameras(settings, metrics, decode_pool, remote.link, check_backend=backends.spec)
    svc = Services(settings, metrics, backends, stream_manager, decode_pool, keyring, remote or local, cameras)
    # a gateway (redis_url set) runs no model unless it also runs workers of its own
    models_here = remote is None or settings.distributed.local_workers

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        local_tasks: list[asyncio.Task[None]] = []
        try:
            for name in settings.preload if models_here else ():
                try:
                    await backends.acquire(name)
                except ServeError as exc:
                    logger.warning("backend %s not preloaded: %s", name, exc.message)
            stream_manager.start()
            if remote is not None:
                await remote.start()
                if isinstance(cameras, RemoteCameras):
                    await cameras.start()
                if settings.distributed.local_workers:
                    served = [n for n in settings.preload if backends.loaded(n)]
                    _worker, local_tasks = local_parts.start_worker(
                        settings, metrics, backends, local, stream_manager, served
                    )
            with reload_on_sighup(keyring) if reload_keys_on_sighup else contextlib.nullcontext():
                yield
        finally:
            await local_parts.stop_tasks(local_tasks)
            if isinstance(cameras, RemoteCameras):
                await cameras.close()
            if remote is not None:
                await remote.close()
            await stream_manager.close()
            backends.close()
            decode_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="poseserve",
        version="0.1.0",
        description="Real-time multi-person pose inference: COCO-17 keypoints per person.",
        lifespan=lifespan,
    )
    app.state.services = svc
    app.openapi = functools.partial(_document, app, keyring, settings.auth)  # type: ignore[method-assign]
    app.include_router(pose.router)
    app.include_router(streams.router)
    app.include_router(streams.ws_router)
    app.include_router(viewer.router)
    app.add_middleware(CapBody, max_bytes=settings.max_json_body_bytes)
    if remote is None:  # a gateway admits in `RedisJobs.admit`: its slots are not local tickets
        app.add_middleware(ShedOverload, services=svc)  # inside auth: a key is checked before a slot is asked
    app.add_middleware(AuthMiddleware, keyring=keyring, settings=settings.auth)  # inside `observe`

    app.add_middleware(_Observe, metrics=metrics)  # outermost: counts refusals too

    @app.exception_handler(ServeError)
    async def serve_error(_: Request, exc: ServeError) -> JSONResponse:
        return serve_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return error_response(422, "validation_error", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        return error_response(exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal", "internal error; see the server log")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def readiness_problems() -> list[str]:
        """Why the service is not ready (empty: ready); sets `poseserve_ready`."""
        preload = settings.preload if models_here else ()
        problems = [f"backend {name} (preload) is not loaded" for name in preload if not backends.loaded(name)]
        problems += backends.problems()  # stages with dead workers, named
        if remote is not None and not remote.link.connected:  # the gateway's own link, kept current by its loops
            problems.append("redis is unreachable")
        metrics.ready.set(0.0 if problems else 1.0)
        return problems

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "not ready"}})
    async def readyz() -> JSONResponse:
        problems = await readiness_problems()
        if problems:
            return JSONResponse({"status": "not_ready", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", response_class=PlainTextResponse, responses={200: {"description": "Prometheus text format"}})
    async def metrics_endpoint() -> Response:
        await readiness_problems()  # `poseserve_ready` as fresh as the scrape
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _document(app: FastAPI, keyring: Keyring, auth: AuthSettings) -> dict[str, Any]:
    """The OpenAPI document (built once) with only the 422 answers the routes declare themselves,
    and the API keys each route needs."""
    if app.openapi_schema is None:
        document = without_default_validation_answers(FastAPI.openapi(app))
        app.openapi_schema = with_security(document, route_scopes(auth), keys_required=keyring.enabled)
    return app.openapi_schema


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at the request's path (Starlette's own `Allow` names only
    the methods of the first route that matched the path, e.g. GET without DELETE)."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]
    return ", ".join(allowed)


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
            path = getattr(scope.get("route"), "path", None) or scope.get(REFUSED_ROUTE, "unmatched")
            self.metrics.requests_total.labels(route=path, code=str(status)).inc()
            self.metrics.request_seconds.labels(route=path).observe(time.perf_counter() - started)
