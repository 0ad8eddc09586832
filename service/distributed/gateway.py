"""The gateway's `ImageJobs`: each image goes to a worker over the backend's Redis Stream.

`admit` refuses at once (503 + Retry-After) while Redis is unreachable, while no worker of the
backend has a fresh heartbeat, or at `max_queue` jobs in flight per live worker. `run` XADDs the
job (the encoded image as received: see `service.distributed.redis_jobs`) and awaits its reply
until the request's deadline. One task reads this gateway's reply stream and resolves the
waiting requests: each job is answered once, whatever number of replies arrive (a job
re-delivered after its worker was presumed dead can be answered twice; the second is dropped).
A Redis that comes back as a new server (restarted) lost every job in flight: those requests
fail at once with a retryable 503 rather than waiting for their deadline.
A monitor task publishes the backends' stream lag/pending and live workers every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from service.config import Settings
from service.distributed.link import REDIS_ERRORS, RedisLink
from service.distributed.redis_jobs import (
    GROUP,
    Deduper,
    Job,
    Reply,
    decode_reply,
    encode_job,
    error_from_reply,
    jobs_key,
    replies_key,
    workers_key,
)
from service.distributed.transport import Admitted, PoseOutcome
from service.engine import Ticket
from service.errors import BackendUnavailableError, QueueFullError
from service.metrics import Metrics

__all__ = ["RedisJobs"]

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1.0
MONITOR_PERIOD_S = 1.0
READ_BLOCK_MS = 1000
REPLY_STREAM_TTL_MS = 60_000


@dataclass(eq=False)
class RemoteAdmitted:
    backend: str
    _inflight: dict[str, int] = field(repr=False)
    held: bool = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._inflight[self.backend] -= 1


@dataclass(eq=False)
class _Waiting:
    backend: str
    future: asyncio.Future[Reply]


class RedisJobs:
    def __init__(self, settings: Settings, metrics: Metrics, *, gateway_id: str | None = None) -> None:
        assert settings.redis_url is not None
        self._settings = settings
        self._metrics = metrics
        self.gateway_id = gateway_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._reply_key = replies_key(self.gateway_id)
        self.link = RedisLink(
            settings.redis_url, metrics, backoff_max_s=settings.distributed.backoff_max_s, role="gateway"
        )
        self._waiting: dict[str, _Waiting] = {}
        self._dedupe = Deduper()
        self._inflight: dict[str, int] = {}
        self._live_workers: dict[str, int] = {}
        self._watched: set[str] = set(settings.preload) | {settings.default_backend}
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start reading replies and monitoring (Redis may be down: both retry until it is up)."""
        self._tasks = [
            asyncio.create_task(self._read_replies(), name="redis-replies"),
            asyncio.create_task(self._monitor(), name="redis-monitor"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(*REDIS_ERRORS):
            await asyncio.wait_for(self.link.client.delete(self._reply_key), 1.0)
        await self.link.close()

    @property
    def connected(self) -> bool:
        return self.link.connected

    # -- ImageJobs -------------------------------------------------------------------------------
    async def admit(self, backend: str, *, reserved: Ticket | None = None) -> RemoteAdmitted:
        """(`reserved` is never set here: `ShedOverload` runs only in-process.)"""
        if not self.link.connected:
            raise BackendUnavailableError("Redis is unreachable; retry shortly", retry_after_s=RETRY_AFTER_S)
        self._watched.add(backend)
        live = self._live_workers.get(backend)
        if live == 0 and time.monotonic() - self.link.connected_at >= self._settings.distributed.worker_ttl_ms / 1000:
            # (right after Redis came back, workers have not said they are alive again yet)
            raise BackendUnavailableError(
                f"no worker serves backend {backend} (start `poseserve worker --backend {backend}`)",
                retry_after_s=RETRY_AFTER_S,
            )
        limit = self._settings.backend(backend).max_queue * max(1, live or 1)
        inflight = self._inflight.get(backend, 0)
        if inflight >= limit:
            raise QueueFullError(
                f"{backend}: {inflight} jobs in flight from this gateway ({limit} allowed for {live} workers)",
                retry_after_s=RETRY_AFTER_S,
            )
        self._inflight[backend] = inflight + 1
        return RemoteAdmitted(backend, self._inflight)

    async def run(self, admitted: Admitted, data: bytes, *, deadline: float) -> PoseOutcome:
        backend = admitted.backend
        job_id = uuid.uuid4().hex
        now = time.time()
        job = Job(job_id, self._reply_key, deadline=now + (deadline - time.monotonic()), enqueued=now, image=data)
        waiting = _Waiting(backend, asyncio.get_running_loop().create_future())
        self._waiting[job_id] = waiting
        try:
            try:
                await asyncio.wait_for(
                    self.link.client.xadd(
                        jobs_key(backend),
                        encode_job(job),  # type: ignore[arg-type]
                        maxlen=self._settings.distributed.stream_maxlen,
                        approximate=True,
                    ),
                    timeout=max(0.0, deadline - time.monotonic()),
                )
            except REDIS_ERRORS as exc:
                if isinstance(exc, TimeoutError) and time.monotonic() >= deadline:
                    raise
                self.link.lost(exc)
                raise BackendUnavailableError(
                    f"Redis is unreachable ({type(exc).__name__}); retry shortly", retry_after_s=RETRY_AFTER_S
                ) from None
            self._count(backend, "sent")
            reply = await asyncio.wait_for(waiting.future, timeout=max(0.0, deadline - time.monotonic()))
        finally:
            self._waiting.pop(job_id, None)
        if reply.outcome is None:
            raise error_from_reply(reply)
        return reply.outcome

    # -- replies ---------------------------------------------------------------------------------
    def deliver(self, reply: Reply) -> None:
        """Resolve the request waiting for `reply.id`, once; later replies are counted and dropped."""
        if not self._dedupe.first(reply.id):
            self._count(None, "duplicate")
            return
        waiting = self._waiting.pop(reply.id, None)
        if waiting is None or waiting.future.done():
            self._count(None, "late")
            return
        waiting.future.set_result(reply)
        self._count(waiting.backend, "answered")

    async def _read_replies(self) -> None:
        last_id = "0-0"
        backoff = self.link.backoff()
        while True:
            try:
                if not self.link.connected and await self.link.confirm():
                    self._fail_waiting("Redis restarted and lost the job; retry")
                    last_id = "0-0"
                got: Any = await self.link.client.xread({self._reply_key: last_id}, count=256, block=READ_BLOCK_MS)
            except REDIS_ERRORS as exc:
                self.link.lost(exc)
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            for _stream, entries in got or ():
                for entry_id, fields in entries:
                    last_id = entry_id
                    try:
                        reply = decode_reply(fields)
                    except (KeyError, ValueError) as exc:
                        logger.error("malformed reply %s on %s dropped: %s", entry_id, self._reply_key, exc)
                        continue
                    self.deliver(reply)

    def _fail_waiting(self, message: str) -> None:
        for job_id, waiting in list(self._waiting.items()):
            if not waiting.future.done():
                waiting.future.set_exception(BackendUnavailableError(message, retry_after_s=RETRY_AFTER_S))
                self._count(waiting.backend, "lost")
            self._waiting.pop(job_id, None)

    def _count(self, backend: str | None, outcome: str) -> None:
        self._metrics.redis_jobs_total.labels(backend=backend or "", outcome=outcome).inc()

    # -- monitoring ------------------------------------------------------------------------------
    async def _monitor(self) -> None:
        """Every second: stream lag/pending and live workers of every backend this gateway used."""
        ttl_ms = self._settings.distributed.worker_ttl_ms
        while True:
            await asyncio.sleep(MONITOR_PERIOD_S)
            if not self.link.connected:
                continue
            names = sorted(self._watched)
            now_ms = int(time.time() * 1000)
            try:
                pipe = self.link.client.pipeline(transaction=False)
                for name in names:
                    pipe.xinfo_groups(jobs_key(name))
                    pipe.zcount(workers_key(name), now_ms - ttl_ms, "+inf")
                    pipe.zremrangebyscore(workers_key(name), "-inf", now_ms - 10 * ttl_ms)  # long gone
                results = await pipe.execute(raise_on_error=False)
            except REDIS_ERRORS as exc:
                self.link.lost(exc)
                continue
            for i, name in enumerate(names):
                groups, live = results[3 * i], results[3 * i + 1]
                if isinstance(live, int):
                    self._live_workers[name] = live
                    self._metrics.redis_workers.labels(backend=name).set(live)
                group = (
                    next((g for g in groups if g.get("name") in (GROUP, GROUP.encode())), None)
                    if isinstance(groups, list)
                    else None
                )
                if group is not None:
                    self._metrics.redis_stream_lag.labels(backend=name).set(group.get("lag") or 0)
                    self._metrics.redis_stream_pending.labels(backend=name).set(group.get("pending") or 0)
