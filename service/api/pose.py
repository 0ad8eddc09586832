"""`POST /v1/pose` and `GET /v1/backends`.

The backend admits the request first (a slot reserved, or 503 `overloaded` + Retry-After when it
would wait longer than `max_queue_delay_ms`), before any byte of the body is read; then the body
is read with a byte cap, decoded and preprocessed on the decode pool (never on the event loop),
batched by the backend's runner in the reserved slot, and awaited with the request's deadline.
All of that is `svc.jobs` (`service.distributed.transport`): in this process by default; in
distributed mode a worker process does the decoding and the batching, and the answer names it
in the `X-Poseserve-Worker` header.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.api.deps import Services, require_scope, services
from service.api.openapi import AUTH_ERRORS, POSE_REQUEST_BODY, error_responses
from service.api.shed import SLOT
from service.distributed.transport import Admitted
from service.errors import (
    DeadlineExceededError,
    ImageTooLargeError,
    InvalidImageError,
    OverloadedError,
    UnsupportedMediaTypeError,
)
from service.imaging import ACCEPTED_MEDIA_TYPES
from service.schemas import BackendInfo, PoseResponse, persons_json

__all__ = ["router"]

router = APIRouter(prefix="/v1", dependencies=[Depends(require_scope("pose"))])

WORKER_HEADER = "X-Poseserve-Worker"
"""names the worker process that ran the image, in distributed mode"""


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
            await form.close()
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


@router.post(
    "/pose",
    response_model=PoseResponse,
    openapi_extra=POSE_REQUEST_BODY,
    responses=error_responses(
        "invalid_image",
        *AUTH_ERRORS,
        "unknown_backend",
        "weights_missing",
        "too_large",
        "unsupported_media_type",
        "validation_error",
        "overloaded",
        "backend_unavailable",
        "timeout",
    ),
)
async def pose(
    request: Request,
    backend: str | None = Query(None, description="backend name; default from settings"),
    min_score: float | None = Query(None, ge=0.0, le=1.0, description="drop persons scoring below"),
) -> Response:
    # The hot route: the services straight from the app state, and the body encoded without
    # validating it against `PoseResponse` again (0.1 ms of the event loop's ~1.5 ms a request).
    svc: Services = request.app.state.services
    settings = svc.settings
    arrived = time.monotonic()
    name = backend or settings.default_backend
    svc.backends.spec(name)  # unknown backend -> 404 before reading the body
    if svc.inflight >= settings.max_inflight_requests:
        raise OverloadedError(f"{svc.inflight} requests in flight; retry shortly")
    svc.inflight += 1
    admitted: Admitted | None = None
    try:
        # a first use loads the model (not part of the deadline); refused before the body is read
        # when it could not start in time (in this process most often already by `ShedOverload`,
        # which hands over the slot it reserved)
        admitted = await svc.jobs.admit(name, reserved=request.scope.get(SLOT))
        deadline = time.monotonic() + settings.request_timeout_s
        try:
            async with asyncio.timeout(settings.request_timeout_s):  # no task of its own, unlike wait_for
                data = await _image_bytes(request, settings.max_image_bytes)
            result = await svc.jobs.run(admitted, data, deadline=deadline)
        except TimeoutError:
            raise DeadlineExceededError(
                f"no result within {settings.request_timeout_s:g} s (request_timeout_s)"
            ) from None
    finally:
        svc.inflight -= 1
        if admitted is not None:
            admitted.release()
    threshold = settings.min_person_score if min_score is None else min_score
    body = {
        "request_id": uuid.uuid4().hex,
        "backend": name,
        "untrained": result.untrained,
        "image": {"width": result.width, "height": result.height},
        "persons": persons_json(result.persons.above(threshold)),
        "timing_ms": {
            "queue": round(result.queue_s * 1000, 3),
            "inference": round(result.inference_s * 1000, 3),
            "total": round((time.monotonic() - arrived) * 1000, 3),
        },
    }
    headers = {WORKER_HEADER: result.worker} if result.worker is not None else None
    # non-finite numbers as null, as the response model's serializer writes them
    return Response(to_json(body, inf_nan_mode="null"), media_type="application/json", headers=headers)


@router.get("/backends", response_model=list[BackendInfo], responses=error_responses(*AUTH_ERRORS))
async def backends(svc: Services = Depends(services)) -> list[dict[str, Any]]:
    return await run_in_threadpool(svc.backends.describe)
