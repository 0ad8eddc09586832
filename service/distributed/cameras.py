"""Camera subscriptions behind `/v1/streams`: in this process, or a registry in Redis (gateways).

`Cameras` is what the routes use. `LocalCameras` wraps this process's `StreamManager`.
`RemoteCameras` (a gateway) keeps the subscriptions in Redis, so that any gateway lists and
deletes any stream; a worker leases each camera and runs it (`camera_worker`), publishes every
result on `poseserve:results:{stream_id}`, and writes the stream's figures to Redis each second.
Each gateway subscribes to the result channels of the streams its WebSocket clients watch and
fans the messages out to them (bounded queues: a slow client loses old messages, never memory).

Keys
- `poseserve:streams`: hash, stream id -> the subscription (JSON: id, name, url, backend, max_fps, created_at);
- `poseserve:stream_names`: hash, name -> id (HSETNX keeps names unique across gateways);
- `poseserve:stream_info`: hash, stream id -> its `StreamInfo` JSON, written by the worker running it;
- `poseserve:stream_owner`: hash, stream id -> the worker that last held its lease;
- `poseserve:lease:{stream_id}`: the lease (the holder's id, SET NX PX, renewed by the holder).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from service.config import Settings, StreamSettings
from service.distributed.link import REDIS_ERRORS, RedisLink
from service.distributed.redis_jobs import KEY_PREFIX
from service.errors import (
    BackendUnavailableError,
    DuplicateStreamError,
    NoFrameError,
    PreviewDisabledError,
    StreamLimitError,
    UnknownStreamError,
)
from service.metrics import Metrics
from service.schemas import StreamCreate, StreamInfo, StreamStateEvent
from service.streams.manager import StreamManager
from service.streams.preview import FramePreviews, preview_refusal
from service.streams.states import StreamState
from service.streams.stream import ClientQueue, Stream
from service.streams.urls import redact, validate_stream_url

__all__ = [
    "INFO_KEY",
    "NAMES_KEY",
    "OWNER_KEY",
    "STREAMS_KEY",
    "Cameras",
    "LocalCameras",
    "RemoteCameras",
    "StreamSpec",
    "as_text",
    "create_stream",
    "frame_key",
    "lease_key",
    "results_channel",
]

logger = logging.getLogger(__name__)

STREAMS_KEY = f"{KEY_PREFIX}:streams"
NAMES_KEY = f"{KEY_PREFIX}:stream_names"
INFO_KEY = f"{KEY_PREFIX}:stream_info"
OWNER_KEY = f"{KEY_PREFIX}:stream_owner"


def lease_key(stream_id: str) -> str:
    return f"{KEY_PREFIX}:lease:{stream_id}"


def frame_key(stream_id: str) -> str:
    """The latest preview JPEG of a stream, written by the worker running it (expires with it)."""
    return f"{KEY_PREFIX}:frame:{stream_id}"


def results_channel(stream_id: str) -> str:
    return f"{KEY_PREFIX}:results:{stream_id}"


@dataclass(frozen=True)
class StreamSpec:
    """A subscription as the registry holds it."""

    id: str
    name: str
    url: str
    backend: str
    max_fps: float
    created_at: float
    options: dict[str, Any] = field(default_factory=dict)
    """the rest of `StreamCreate` (tracking, smoothing, skeleton_only, det_every_n, ...), as JSON"""

    def create_body(self) -> StreamCreate:
        """The subscription as the worker running it creates it."""
        return StreamCreate(url=self.url, name=self.name, backend=self.backend, max_fps=self.max_fps, **self.options)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: bytes | str) -> StreamSpec:
        return cls(**json.loads(text))

    def waiting_info(self) -> StreamInfo:
        """What the API shows before a worker has taken the camera."""
        body = self.create_body()
        return StreamInfo(
            tracking=body.tracking,
            smoothing=body.smoothing,
            skeleton_only=body.skeleton_only,
            id=self.id,
            name=self.name,
            url=redact(self.url),
            backend=self.backend,
            max_fps=self.max_fps,
            state=StreamState.CONNECTING,
            created_at=self.created_at,
            input_fps=0.0,
            result_fps=0.0,
            last_frame_age_s=None,
            reconnects=0,
            reader_restarts=0,
            frames={},
            drops={},
            reader_cpu_s=0.0,
            ws_clients=0,
        )


class Cameras(Protocol):
    async def create(self, body: StreamCreate) -> StreamInfo: ...
    async def list(self) -> list[StreamInfo]: ...
    async def get(self, stream_id: str) -> StreamInfo: ...
    async def delete(self, stream_id: str) -> None: ...
    async def subscribe(self, stream_id: str) -> ClientQueue: ...
    def unsubscribe(self, stream_id: str, client: ClientQueue) -> None: ...
    async def frame(self, stream_id: str) -> bytes: ...


class LocalCameras:
    """The cameras of this process (`StreamManager`)."""

    def __init__(self, manager: StreamManager, previews: FramePreviews, settings: StreamSettings) -> None:
        self._manager = manager
        self._previews = previews
        self._settings = settings

    async def frame(self, stream_id: str) -> bytes:
        """The stream's latest frame as JPEG (`FramePreviews`), where previews are allowed."""
        stream = self._manager.get(stream_id)
        if (refusal := preview_refusal(self._settings, stream.skeleton_only)) is not None:
            raise PreviewDisabledError(refusal)
        return await self._previews.jpeg(stream, self._settings.preview_fps)

    async def create(self, body: StreamCreate) -> StreamInfo:
        return StreamInfo.from_snapshot((await create_stream(self._manager, body)).snapshot())

    async def list(self) -> list[StreamInfo]:
        return [StreamInfo.from_snapshot(s.snapshot()) for s in self._manager.list()]

    async def get(self, stream_id: str) -> StreamInfo:
        return StreamInfo.from_snapshot(self._manager.get(stream_id).snapshot())

    async def delete(self, stream_id: str) -> None:
        await self._manager.delete(stream_id)

    async def subscribe(self, stream_id: str) -> ClientQueue:
        return self._manager.subscribe(stream_id)

    def unsubscribe(self, stream_id: str, client: ClientQueue) -> None:
        self._manager.unsubscribe(stream_id, client)


async def create_stream(manager: StreamManager, body: StreamCreate) -> Stream:
    """`body`'s subscription in `manager` (raises what `StreamManager.create` raises)."""
    return await manager.create(
        body.url,
        name=body.name,
        backend=body.backend,
        max_fps=body.max_fps,
        tracking=body.tracking,
        smoothing=body.smoothing,
        skeleton_only=body.skeleton_only,
        det_every_n=body.det_every_n,
    )


def as_text(value: bytes | str) -> str:
    """A Redis reply as text (clients built with or without ``decode_responses``)."""
    return value.decode() if isinstance(value, bytes) else value


_REGISTER = """
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 'limit' end
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 0 then return 'duplicate' end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
return 'ok'
"""
"""a subscription registered in one step: the stream limit, the unique name and the spec together
(gateways registering at once cannot pass `max_streams` between a count and a write)"""


class RemoteCameras:
    """A gateway's view of the Redis stream registry, and its WebSocket fan-out."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        pool: Executor,
        link: RedisLink,
        *,
        check_backend: Callable[[str], Any],
    ) -> None:
        """`link`: the gateway's (`RedisJobs.link`, whose reply loop notices Redis coming back)."""
        self._settings = settings
        self._metrics = metrics
        self._pool = pool
        self._check_backend = check_backend
        self.link = link
        self._pubsub = self.link.client.pubsub(ignore_subscribe_messages=True)
        self._clients: dict[str, set[ClientQueue]] = {}
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="redis-stream-results")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        for clients in self._clients.values():
            for client in clients:
                client.close()
        with contextlib.suppress(*REDIS_ERRORS):
            await self._pubsub.aclose()

    async def _call(self, command: Callable[[], Any]) -> Any:
        """Run a Redis command; Redis out of reach answers 503 (retryable)."""
        if not self.link.connected:
            raise BackendUnavailableError("Redis is unreachable; retry shortly", retry_after_s=1.0)
        try:
            return await command()
        except REDIS_ERRORS as exc:
            self.link.lost(exc)
            raise BackendUnavailableError("Redis is unreachable; retry shortly", retry_after_s=1.0) from None

    # -- registry ----------------------------------------------------------------------------------
    async def create(self, body: StreamCreate) -> StreamInfo:
        url = body.url
        backend_name = body.backend or self._settings.default_backend
        self._check_backend(backend_name)  # UnknownBackendError
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, validate_stream_url, url, self._settings.streams)
        limit = self._settings.streams.max_streams
        stream_id = uuid.uuid4().hex[:12]
        spec = StreamSpec(
            id=stream_id,
            name=body.name or stream_id,
            url=url,
            backend=backend_name,
            max_fps=body.max_fps or self._settings.streams.default_max_fps,
            created_at=time.time(),
            options=body.model_dump(exclude={"url", "name", "backend", "max_fps"}, mode="json"),
        )
        outcome = await self._call(
            lambda: self.link.client.eval(
                _REGISTER, 2, STREAMS_KEY, NAMES_KEY, limit, spec.name, stream_id, spec.to_json()
            )
        )
        if as_text(outcome) == "limit":
            raise StreamLimitError(f"at most {limit} streams (streams.max_streams)")
        if as_text(outcome) == "duplicate":
            raise DuplicateStreamError(f"a stream named {spec.name!r} exists already")
        logger.info("stream %s (%s) registered: %s", spec.name, stream_id, redact(url))
        return spec.waiting_info()

    async def list(self) -> list[StreamInfo]:
        def both() -> Any:
            pipe = self.link.client.pipeline(transaction=False)
            pipe.hgetall(STREAMS_KEY)
            pipe.hgetall(INFO_KEY)
            return pipe.execute()

        specs, infos = await self._call(both)
        out = [self._info(StreamSpec.from_json(raw), infos.get(sid)) for sid, raw in specs.items()]
        return sorted(out, key=lambda s: s.created_at)

    async def get(self, stream_id: str) -> StreamInfo:
        def both() -> Any:
            pipe = self.link.client.pipeline(transaction=False)
            pipe.hget(STREAMS_KEY, stream_id)
            pipe.hget(INFO_KEY, stream_id)
            return pipe.execute()

        raw, info = await self._call(both)
        if raw is None:
            raise UnknownStreamError(f"no stream with id {stream_id!r}")
        return self._info(StreamSpec.from_json(raw), info)

    async def frame(self, stream_id: str) -> bytes:
        """The JPEG the worker running the stream keeps in Redis (`frame_key`), where previews are allowed."""

        def both() -> Any:
            pipe = self.link.client.pipeline(transaction=False)
            pipe.hget(STREAMS_KEY, stream_id)
            pipe.get(frame_key(stream_id))
            return pipe.execute()

        raw, jpeg = await self._call(both)
        if raw is None:
            raise UnknownStreamError(f"no stream with id {stream_id!r}")
        skeleton_only = bool(StreamSpec.from_json(raw).options.get("skeleton_only"))
        if (refusal := preview_refusal(self._settings.streams, skeleton_only)) is not None:
            raise PreviewDisabledError(refusal)
        if jpeg is None:
            raise NoFrameError(f"stream {stream_id!r} has no frame yet", retry_after_s=1.0)
        return bytes(jpeg)

    def _info(self, spec: StreamSpec, info: bytes | None) -> StreamInfo:
        shown = spec.waiting_info() if info is None else StreamInfo.model_validate_json(info)
        return shown.model_copy(update={"ws_clients": len(self._clients.get(spec.id, ()))})

    async def delete(self, stream_id: str) -> None:
        raw = await self._call(lambda: self.link.client.hget(STREAMS_KEY, stream_id))
        if raw is None:
            raise UnknownStreamError(f"no stream with id {stream_id!r}")
        spec = StreamSpec.from_json(raw)

        def remove() -> Any:
            pipe = self.link.client.pipeline(transaction=True)
            pipe.hdel(STREAMS_KEY, stream_id)
            pipe.hdel(NAMES_KEY, spec.name)
            pipe.hdel(INFO_KEY, stream_id)
            pipe.hdel(OWNER_KEY, stream_id)
            pipe.delete(frame_key(stream_id))
            stopped = StreamStateEvent(stream_id=stream_id, state=StreamState.STOPPED).model_dump_json()
            pipe.publish(results_channel(stream_id), stopped)
            return pipe.execute()

        await self._call(remove)
        logger.info("stream %s (%s) removed", spec.name, stream_id)

    # -- WebSocket fan-out -------------------------------------------------------------------------
    async def subscribe(self, stream_id: str) -> ClientQueue:
        info = await self.get(stream_id)  # UnknownStreamError
        client = ClientQueue(
            self._settings.streams.ws_queue_messages,
            on_drop=lambda: self._metrics.ws_messages_dropped_total.labels(stream=info.name).inc(),
        )
        clients = self._clients.setdefault(stream_id, set())
        if not clients:
            await self._call(lambda: self._pubsub.subscribe(results_channel(stream_id)))
        clients.add(client)
        client.put(StreamStateEvent(stream_id=stream_id, state=info.state).model_dump_json())
        self._metrics.ws_clients.labels(stream=info.name).set(len(clients))
        return client

    def unsubscribe(self, stream_id: str, client: ClientQueue) -> None:
        clients = self._clients.get(stream_id)
        if clients is None:
            return
        clients.discard(client)
        if not clients:
            del self._clients[stream_id]
            task = asyncio.get_running_loop().create_task(self._unsubscribe(stream_id))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _unsubscribe(self, stream_id: str) -> None:
        if stream_id not in self._clients:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._pubsub.unsubscribe(results_channel(stream_id))

    async def _listen(self) -> None:
        """Hand every result message to the WebSocket clients of its stream."""
        backoff = self.link.backoff()
        prefix = len(results_channel(""))
        while True:
            if not self._pubsub.subscribed:
                await asyncio.sleep(0.05)
                continue
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except REDIS_ERRORS as exc:
                self.link.lost(exc)
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            if message is None or message.get("type") != "message":
                continue
            stream_id = message["channel"].decode()[prefix:]
            text = message["data"].decode()
            stopped = text.startswith('{"event":"state"') and f'"state":"{StreamState.STOPPED.value}"' in text
            for client in list(self._clients.get(stream_id, ())):
                client.put(text)
                if stopped:
                    client.close()
