"""HTTP API (DESIGN §3): routes, status codes and JSON errors live here and nowhere else.

The event loop never blocks: image decoding and preprocessing run on a small thread pool, model
runs on the backends' worker threads, and every await on a result has the request's deadline.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from models.pipelines import Persons
from models.weights import WeightsStore
from service.backends import BackendManager, LoadedBackend, Prepared
from service.config import Settings
from service.errors import (
    DeadlineExceededError,
    ImageTooLargeError,
    InvalidImageError,
    OverloadedError,
    ServeError,
    UnsupportedMediaTypeError,
)
from service.imaging import ACCEPTED_MEDIA_TYPES, decode_image
from service.metrics import Metrics
from service.schemas import BackendInfo, ErrorResponse, PoseResponse

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

_STATUS = {
    "invalid_image": 400,
    "unauthorized": 401,
    "too_large": 413,
    "unsupported_media_type": 415,
    "unknown_backend": 404,
    "unknown_stream": 404,
    "weights_missing": 409,
    "overloaded": 503,
    "timeout": 504,
    "backend_unavailable": 503,
}
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 415, 422, 503, 504)
}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class _Unauthorized(ServeError):
    code = "unauthorized"


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with `too_large` as soon as it passes `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ImageTooLargeError(f"body is {declared} bytes; the limit is {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ImageTooLargeError(f"body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _image_bytes(request: Request, max_bytes: int) -> bytes:
    """Image bytes from a multipart `image` field or a raw `image/*` body."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        body = await _read_body(request, max_bytes + 64 * 1024)  # allow for multipart framing

        async def replay() -> AsyncGenerator[bytes, None]:
            yield body

        try:
            form = await MultiPartParser(request.headers, replay(), max_files=2, max_fields=16).parse()
        except MultiPartException as exc:
            raise InvalidImageError(f"malformed multipart body: {exc.message}") from exc
        field = form.get("image")
        if not isinstance(field, UploadFile):
            raise InvalidImageError("multipart body has no file field named 'image'")
        data = await field.read()
        await form.close()
        if len(data) > max_bytes:
            raise ImageTooLargeError(f"image is {len(data)} bytes; the limit is {max_bytes}")
        return data
    if media_type in ACCEPTED_MEDIA_TYPES:
        return await _read_body(request, max_bytes)
    accepted = ", ".join(sorted(ACCEPTED_MEDIA_TYPES))
    raise UnsupportedMediaTypeError(
        f"Content-Type {media_type or '(none)'} is not accepted; send multipart/form-data with an "
        f"'image' field, or a raw body with one of: {accepted}"
    )


def _persons_json(persons: Persons) -> list[dict[str, Any]]:
    keypoints = np.round(persons.keypoints.astype(np.float64), 2).tolist()
    boxes = np.round(persons.boxes_xyxy.astype(np.float64), 2).tolist()
    scores = np.round(persons.scores.astype(np.float64), 4).tolist()
    return [{"score": s, "bbox": b, "keypoints": k} for s, b, k in zip(scores, boxes, keypoints, strict=True)]


def create_app(settings: Settings, *, metrics: Metrics | None = None) -> FastAPI:
    """Build the app; models load and workers start in its lifespan."""
    metrics = metrics or Metrics()
    store = WeightsStore(settings.model_dir)
    manager = BackendManager(settings, store, metrics)
    decode_pool = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="decode")
    inflight = 0

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            for name in settings.preload:
                try:
                    await run_in_threadpool(manager.get, name)
                except ServeError as exc:
                    logger.warning("backend %s not preloaded: %s", name, exc.message)
            yield
        finally:
            manager.close()
            decode_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="poseserve",
        version="0.1.0",
        description="Real-time multi-person pose inference: COCO-17 keypoints per person.",
        lifespan=lifespan,
        responses=_ERROR_RESPONSES,
    )
    app.state.settings, app.state.metrics, app.state.manager = settings, metrics, manager

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests_total.labels(route=path, code=str(response.status_code)).inc()
        metrics.request_seconds.labels(route=path).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(ServeError)
    async def serve_error(_: Request, exc: ServeError) -> JSONResponse:
        headers = None
        if isinstance(exc, OverloadedError):
            headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
        elif isinstance(exc, _Unauthorized):
            headers = {"WWW-Authenticate": "Bearer"}
        return _error(_STATUS.get(exc.code, 500), exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return _error(422, "validation_error", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return _error(500, "internal", "internal error; see the server log")

    async def require_key(request: Request) -> None:
        if not settings.api_keys:
            return
        auth = request.headers.get("authorization", "")
        given = (
            auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        )
        if not any(hmac.compare_digest(given.encode(), key.encode()) for key in settings.api_keys):
            raise _Unauthorized("missing or invalid API key (Authorization: Bearer KEY or X-API-Key)")

    async def backend_for(name: str) -> LoadedBackend:
        loaded = manager.loaded(name)
        if loaded is None:
            loaded = await run_in_threadpool(manager.get, name)
        return loaded

    @app.post("/v1/pose", response_model=PoseResponse, dependencies=[Depends(require_key)])
    async def pose(
        request: Request,
        backend: str | None = Query(None, description="backend name; default from settings"),
        min_score: float | None = Query(None, ge=0.0, le=1.0, description="drop persons scoring below"),
    ) -> dict[str, Any]:
        nonlocal inflight
        arrived = time.monotonic()
        deadline = arrived + settings.request_timeout_s
        name = backend or settings.default_backend
        manager.spec(name)  # unknown backend -> 404 before reading the body
        if inflight >= settings.max_inflight_requests:
            raise OverloadedError(f"{inflight} requests in flight; retry shortly")
        inflight += 1
        try:
            be = await backend_for(name)
            data = await _image_bytes(request, settings.max_image_bytes)
            loop = asyncio.get_running_loop()

            def prepare() -> tuple[Prepared, tuple[int, int]]:
                rgb = decode_image(data, max_pixels=settings.max_image_pixels)
                return be.prepare(rgb), (rgb.shape[1], rgb.shape[0])

            try:
                prepared, (width, height) = await asyncio.wait_for(
                    loop.run_in_executor(decode_pool, prepare), timeout=max(0.0, deadline - time.monotonic())
                )
                future = be.runner.submit(prepared, deadline=deadline)
                result = await asyncio.wait_for(
                    asyncio.wrap_future(future), timeout=max(0.0, deadline - time.monotonic())
                )
            except TimeoutError:
                raise DeadlineExceededError(
                    f"no result within {settings.request_timeout_s:g} s (request_timeout_s)"
                ) from None
        finally:
            inflight -= 1
        threshold = settings.min_person_score if min_score is None else min_score
        return {
            "request_id": uuid.uuid4().hex,
            "backend": name,
            "untrained": bool(be.card.get("untrained", False)),
            "image": {"width": width, "height": height},
            "persons": _persons_json(result.value.above(threshold)),
            "timing_ms": {
                "queue": round(result.queue_s * 1000, 3),
                "inference": round(result.inference_s * 1000, 3),
                "total": round((time.monotonic() - arrived) * 1000, 3),
            },
        }

    @app.get("/v1/backends", response_model=list[BackendInfo], dependencies=[Depends(require_key)])
    async def backends() -> list[dict[str, Any]]:
        return await run_in_threadpool(manager.describe)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        problems = []
        if manager.loaded(settings.default_backend) is None:
            problems.append(f"default backend {settings.default_backend} is not loaded")
        if not manager.healthy():
            problems.append("a backend has dead workers")
        if settings.redis_url and not await _redis_reachable(settings.redis_url):
            problems.append("redis is unreachable")
        if problems:
            return JSONResponse({"status": "not_ready", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _redis_reachable(url: str, timeout_s: float = 0.5) -> bool:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout=timeout_s * 2))
    except (OSError, TimeoutError, aioredis.RedisError):
        return False
    finally:
        await client.aclose()
