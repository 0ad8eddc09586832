"""A worker's cameras: lease streams from the Redis registry, run them here, publish their results.

Every `POLL_S` the worker reads the registry (`service.distributed.cameras`). It renews the lease
of each stream it runs (compare-and-expire: only while the lease is still its own) three times
per lease TTL; a stream deleted from the registry, or whose lease it lost, stops here. It
takes a free stream (SET NX PX) of a backend it serves while it runs fewer than its fair share
(streams / live workers, rounded up), and runs it with this process's `StreamManager`: a
forwarder subscribed like a WebSocket client publishes each message on the stream's result
channel. A dead worker stops renewing: its leases expire within the TTL and other workers take
its cameras over (`redis_lease_moves_total`). Losing Redis stops nothing: leases are renewed again
once it is back (or retaken, from a restarted Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from service.config import Settings
from service.distributed.cameras import (
    INFO_KEY,
    OWNER_KEY,
    STREAMS_KEY,
    StreamSpec,
    as_text,
    create_stream,
    frame_key,
    lease_key,
    results_channel,
)
from service.distributed.link import REDIS_ERRORS, RedisLink
from service.distributed.redis_jobs import workers_key
from service.errors import ServeError
from service.metrics import Metrics
from service.schemas import StreamInfo
from service.streams.manager import StreamManager
from service.streams.preview import FramePreviews, preview_refusal
from service.streams.stream import ClientQueue

__all__ = ["CameraWorker"]

logger = logging.getLogger(__name__)

POLL_S = 0.1
INFO_PERIOD_S = 1.0
RENEWALS_PER_TTL = 3
"""a lease is renewed when a third of its TTL has passed: a worker whose event loop stalls for up
to two thirds of the TTL keeps its cameras, and a dead worker's lease expires 3.3-5 s (TTL 5 s)
after its death rather than 4-5 s"""

_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""
"""keep the lease while it is ours; retake it where it vanished (a Redis restarted without persistence)"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(eq=False)
class _Running:
    spec: StreamSpec
    local_id: str
    client: ClientQueue
    forwarder: asyncio.Task[None]


class CameraWorker:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        manager: StreamManager,
        link: RedisLink,
        names: Sequence[str],
        *,
        worker_id: str,
        previews: FramePreviews,
    ) -> None:
        """`link`: the worker's (`JobWorker.link`, whose heartbeat loop notices Redis coming back).
        `previews`: the JPEG encoder of the frames gateways show (`streams.preview_enabled`)."""
        self._settings = settings
        self._previews = previews
        self._preview_at = 0.0
        self._metrics = metrics
        self._manager = manager
        self.link = link
        self._names = set(names)
        self.worker_id = worker_id
        self._ttl_ms = settings.distributed.lease_ttl_ms
        self._running: dict[str, _Running] = {}
        self._renewed_at = 0.0
        self._info_at = 0.0
        self._parsed: dict[bytes | str, StreamSpec] = {}

    async def run(self) -> None:
        backoff = self.link.backoff()
        try:
            while True:
                if not self.link.connected:
                    await asyncio.sleep(backoff.next())
                    continue
                try:
                    await self._tick()
                except REDIS_ERRORS as exc:
                    self.link.lost(exc)
                    await asyncio.sleep(backoff.next())
                    continue
                backoff.reset()
                await asyncio.sleep(POLL_S)
        finally:
            for stream_id in list(self._running):
                await self._stop(stream_id, release=True)

    async def _tick(self) -> None:
        registry = await self.link.client.hgetall(STREAMS_KEY)
        # parsed once per registry entry: every POLL_S tick reads the hash, few ticks change it
        parsed = {raw: self._parsed.get(raw) or StreamSpec.from_json(raw) for raw in registry.values()}
        self._parsed = parsed
        specs = {as_text(sid): parsed[raw] for sid, raw in registry.items()}
        for stream_id in [s for s in self._running if s not in specs]:
            await self._stop(stream_id, release=True)  # deleted from the registry
        now = time.monotonic()
        if now - self._renewed_at >= self._ttl_ms / 1000 / RENEWALS_PER_TTL:
            self._renewed_at = now
            await self._renew()
        await self._take(specs)
        streams = self._settings.streams
        previews_on = preview_refusal(streams, skeleton_only=False) is None  # per stream: `_publish_previews`
        if previews_on and now - self._preview_at >= 1 / streams.preview_fps:
            self._preview_at = now
            await self._publish_previews()
        if now - self._info_at >= INFO_PERIOD_S:
            self._info_at = now
            await self._publish_info()

    async def _renew(self) -> None:
        ids = list(self._running)
        if not ids:
            return
        pipe = self.link.client.pipeline(transaction=False)
        for stream_id in ids:
            pipe.eval(_RENEW, 1, lease_key(stream_id), self.worker_id, self._ttl_ms)
        for stream_id, kept in zip(ids, await pipe.execute(), strict=True):
            if not kept:
                logger.warning("stream %s: lease lost to another worker; stopping it here", stream_id)
                await self._stop(stream_id, release=False)

    async def _take(self, specs: dict[str, StreamSpec]) -> None:
        free = [s for s in specs.values() if s.id not in self._running and s.backend in self._names]
        if not free:
            return
        live = await self.link.client.zcount(
            workers_key(free[0].backend), int(time.time() * 1000) - self._settings.distributed.worker_ttl_ms, "+inf"
        )
        share = math.ceil(len(specs) / max(1, live))
        for spec in free:
            if len(self._running) >= share:
                return
            if not await self.link.client.set(lease_key(spec.id), self.worker_id, nx=True, px=self._ttl_ms):
                continue
            previous = await self.link.client.hget(OWNER_KEY, spec.id)
            await self.link.client.hset(OWNER_KEY, spec.id, self.worker_id)
            if previous is not None and as_text(previous) != self.worker_id:
                self._metrics.redis_lease_moves_total.inc()
                logger.warning("stream %s: taken over from worker %s", spec.name, as_text(previous))
            await self._start(spec)

    async def _start(self, spec: StreamSpec) -> None:
        try:
            stream = await create_stream(self._manager, spec.create_body())
        except ServeError as exc:
            logger.error("stream %s (%s) cannot run here: %s", spec.name, spec.id, exc.message)
            await self.link.client.eval(_RELEASE, 1, lease_key(spec.id), self.worker_id)
            return
        client = self._manager.subscribe(stream.id)
        forwarder = asyncio.create_task(self._forward(spec.id, stream.id, client), name=f"forward-{spec.name}")
        self._running[spec.id] = _Running(spec, stream.id, client, forwarder)
        logger.info("stream %s (%s) running on worker %s", spec.name, spec.id, self.worker_id)

    async def _stop(self, stream_id: str, *, release: bool) -> None:
        running = self._running.pop(stream_id)
        running.forwarder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running.forwarder
        with contextlib.suppress(ServeError):
            await self._manager.delete(running.local_id)
        if release:
            with contextlib.suppress(*REDIS_ERRORS):
                await self.link.client.eval(_RELEASE, 1, lease_key(stream_id), self.worker_id)

    async def _forward(self, stream_id: str, local_id: str, client: ClientQueue) -> None:
        """Publish every message of the local stream on the stream's channel, under its registry id."""
        channel = results_channel(stream_id)
        local, shown = f'"stream_id":"{local_id}"', f'"stream_id":"{stream_id}"'
        while True:
            message = await client.get()
            if message is None:
                return
            try:
                await self.link.client.publish(channel, message.replace(local, shown, 1))
            except REDIS_ERRORS as exc:  # this message is lost; the next one tries again
                self.link.lost(exc)

    async def _publish_previews(self) -> None:
        """Each running stream's latest frame as JPEG under `frame_key`, for the gateways' `frame.jpg`
        (none for a skeleton-only stream). It expires a few preview intervals after this worker
        stops refreshing it."""
        fps = self._settings.streams.preview_fps
        ttl_ms = max(2000, round(3000 / fps))
        pipe = self.link.client.pipeline(transaction=False)
        for stream_id, running in list(self._running.items()):
            try:
                stream = self._manager.get(running.local_id)
                if preview_refusal(self._settings.streams, stream.skeleton_only) is not None:
                    continue
                pipe.set(frame_key(stream_id), await self._previews.jpeg(stream, fps), px=ttl_ms)
            except ServeError:  # no frame yet, or stopped meanwhile
                continue
        if len(pipe):
            await pipe.execute()

    async def _publish_info(self) -> None:
        if not self._running:
            return
        pipe = self.link.client.pipeline(transaction=False)
        for stream_id, running in self._running.items():
            with contextlib.suppress(ServeError):
                local = StreamInfo.from_snapshot(self._manager.get(running.local_id).snapshot())
                shown = local.model_copy(
                    update={"id": stream_id, "created_at": running.spec.created_at, "ws_clients": 0}
                )
                pipe.hset(INFO_KEY, stream_id, shown.model_dump_json())
        await pipe.execute()
