"""Camera subscriptions: `/v1/streams` CRUD, the frame preview and `WS /v1/streams/{id}/ws`.

A WebSocket client gets one JSON message per processed frame plus `{"event": "state"}` messages.
Each client has a bounded queue: a slow client loses its oldest messages, never server memory.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Depends, Response, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from service.api.deps import Services, require_scope, services, websocket_key_ok
from service.api.openapi import AUTH_ERRORS, JPEG_ANSWER, error_responses
from service.errors import UnknownStreamError
from service.schemas import StreamCreate, StreamInfo
from service.streams.stream import ClientQueue

__all__ = ["router", "ws_router"]

router = APIRouter(prefix="/v1/streams", dependencies=[Depends(require_scope("streams"))])
ws_router = APIRouter()

_CLOSE_POLICY = 1008
_CLOSE_NOT_FOUND = 4404


@router.post(
    "",
    status_code=201,
    response_model=StreamInfo,
    responses=error_responses(
        *AUTH_ERRORS,
        "invalid_stream_url",
        "unknown_backend",
        "duplicate_stream",
        "too_many_streams",
        "weights_missing",
        "too_large",
        "validation_error",
        "backend_unavailable",
    ),
)
async def create_stream(body: StreamCreate, svc: Services = Depends(services)) -> StreamInfo:
    return await svc.cameras.create(body)


@router.get("", response_model=list[StreamInfo], responses=error_responses(*AUTH_ERRORS))
async def list_streams(svc: Services = Depends(services)) -> list[StreamInfo]:
    return await svc.cameras.list()


@router.get("/{stream_id}", response_model=StreamInfo, responses=error_responses(*AUTH_ERRORS, "unknown_stream"))
async def get_stream(stream_id: str, svc: Services = Depends(services)) -> StreamInfo:
    return await svc.cameras.get(stream_id)


@router.delete("/{stream_id}", status_code=204, responses=error_responses(*AUTH_ERRORS, "unknown_stream"))
async def delete_stream(stream_id: str, svc: Services = Depends(services)) -> Response:
    await svc.cameras.delete(stream_id)
    return Response(status_code=204)


@router.get(
    "/{stream_id}/frame.jpg",
    response_class=Response,
    responses={
        200: JPEG_ANSWER,
        **error_responses(*AUTH_ERRORS, "preview_disabled", "unknown_stream", "no_frame"),
    },
)
async def stream_frame(stream_id: str, svc: Services = Depends(services)) -> Response:
    """The stream's latest camera frame as JPEG (low rate: `streams.preview_fps`); off unless
    `streams.preview_enabled` (403 `preview_disabled`), 503 `no_frame` before its first frame."""
    jpeg = await svc.cameras.frame(stream_id)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


async def _pump(websocket: WebSocket, client: ClientQueue) -> None:
    while True:
        message = await client.get()
        if message is None:  # the stream was deleted
            return
        await websocket.send_text(message)


async def _drain(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends, until it disconnects."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await websocket.receive_text()


@ws_router.websocket("/v1/streams/{stream_id}/ws")
async def stream_ws(websocket: WebSocket, stream_id: str) -> None:
    svc: Services = websocket.app.state.services
    await websocket.accept()
    if not websocket_key_ok(websocket):
        await websocket.close(code=_CLOSE_POLICY, reason="missing or invalid API key")
        return
    try:
        client = await svc.cameras.subscribe(stream_id)
    except UnknownStreamError as exc:
        await websocket.close(code=_CLOSE_NOT_FOUND, reason=exc.message)
        return
    tasks = [asyncio.create_task(_pump(websocket, client)), asyncio.create_task(_drain(websocket))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await task
        svc.cameras.unsubscribe(stream_id, client)
        if websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):  # the client may be gone already
                await websocket.close()
