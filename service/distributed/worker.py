"""A worker: takes image jobs of its backends from Redis, runs them in batches, replies, acknowledges.

Per backend, a consume loop reads up to `max_batch` new jobs at once (XREADGROUP, consumer group
`workers`) whenever one of its `workers + 1` batch slots is free, and a reclaim loop takes over
the jobs another consumer left unacknowledged for `visibility_timeout_ms` (XAUTOCLAIM: that worker
is presumed dead). The same loop renews the claim on the jobs this worker still runs every half
visibility timeout, so a slow batch of a live worker is not taken over. A batch of jobs is
decoded and preprocessed together on the decode pool, then queued into the backend's batcher all
at once (so they run as one model batch), answered on each job's reply stream, then
acknowledged (XACK) in the same round trip. A job past its
deadline is acknowledged and dropped, never run. A worker that dies between running and
acknowledging gets its jobs re-delivered: gateways drop the second reply.

A heartbeat (sorted set per backend) tells gateways which workers are alive. Losing Redis costs
the replies of the batches in flight (their jobs are re-delivered, or gone with a restarted
Redis); every loop retries with backoff and resumes when Redis is back, recreating the stream and
the consumer group if a restarted Redis lost them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError
from redis.typing import StreamIdT

from service.backends import BackendManager, Prepared
from service.config import Settings
from service.distributed.link import REDIS_ERRORS, Backoff, RedisLink
from service.distributed.redis_jobs import GROUP, Job, decode_job, encode_reply, jobs_key, workers_key
from service.distributed.transport import InProcessJobs, LocalAdmitted, PoseOutcome, outcome
from service.errors import BackendUnavailableError, DeadlineExceededError, ServeError
from service.metrics import Metrics

__all__ = ["JobWorker", "default_worker_id"]

logger = logging.getLogger(__name__)

READ_BLOCK_MS = 1000
CONSUMER_SWEEP_TICKS = 60
"""reclaim ticks (half a visibility timeout each) between sweeps of dead consumers"""
REPLY_STREAM_TTL_MS = 60_000

Entry = tuple[bytes, dict[bytes, bytes]]


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class JobWorker:
    """Serves `names` (backends loaded by `backends`) from Redis until cancelled."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        backends: BackendManager,
        local: InProcessJobs,
        names: Sequence[str],
        *,
        worker_id: str | None = None,
    ) -> None:
        assert settings.redis_url is not None
        self._settings = settings
        self._dist = settings.distributed
        self._metrics = metrics
        self._backends = backends
        self._local = local
        self._names = list(names)
        self.worker_id = worker_id or self._dist.worker_name or default_worker_id()
        self.link = RedisLink(settings.redis_url, metrics, backoff_max_s=self._dist.backoff_max_s, role="worker")
        self._slots = {n: asyncio.Semaphore(settings.backend(n).workers + 1) for n in self._names}
        self._batches: set[asyncio.Task[None]] = set()
        self._held: dict[str, set[bytes]] = {n: set() for n in self._names}
        """entry ids of the jobs each backend's batches hold now (their claim is renewed)"""

    async def run(self) -> None:
        """Consume, reclaim and heartbeat until cancelled; then leave the heartbeat set."""
        loops = [self._heartbeat()]
        for name in self._names:
            loops += [self._consume(name), self._reclaim(name)]
        try:
            await asyncio.gather(*loops)
        finally:
            for task in list(self._batches):
                task.cancel()
            with contextlib.suppress(*REDIS_ERRORS):
                pipe = self.link.client.pipeline(transaction=False)
                for name in self._names:
                    pipe.zrem(workers_key(name), self.worker_id)
                await asyncio.wait_for(pipe.execute(), 1.0)
            await self.link.close()

    # -- loops -----------------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        # retried at least once per heartbeat: gateways count this worker again soon after Redis is back
        backoff = Backoff(max_s=min(self._dist.backoff_max_s, self._dist.heartbeat_ms / 1000))
        while True:
            try:
                if not self.link.connected:
                    await self.link.confirm()
                pipe = self.link.client.pipeline(transaction=False)
                for name in self._names:
                    pipe.zadd(workers_key(name), {self.worker_id: int(time.time() * 1000)})
                await pipe.execute()
            except REDIS_ERRORS as exc:
                self.link.lost(exc)
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            await asyncio.sleep(self._dist.heartbeat_ms / 1000)

    async def _consume(self, name: str) -> None:
        key, max_batch = jobs_key(name), self._settings.backend(name).max_batch
        backoff = self.link.backoff()
        await self._ensure_group(key)
        while True:
            await self._slots[name].acquire()
            try:
                got: Any = await self.link.client.xreadgroup(
                    GROUP, self.worker_id, {key: ">"}, count=max_batch, block=READ_BLOCK_MS
                )
            except ResponseError as exc:
                self._slots[name].release()
                if "NOGROUP" not in str(exc):
                    logger.error("%s: XREADGROUP failed: %s", name, exc)
                    await asyncio.sleep(backoff.next())
                await self._ensure_group(key)  # a restarted Redis lost the stream and its group
                continue
            except REDIS_ERRORS as exc:
                self._slots[name].release()
                self.link.lost(exc)
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            entries: list[Entry] = [e for _stream, es in got or () for e in es]
            self._start_batch(name, entries)

    async def _reclaim(self, name: str) -> None:
        """Every half visibility timeout: take over jobs left unacknowledged that long."""
        key, max_batch = jobs_key(name), self._settings.backend(name).max_batch
        period_s = self._dist.visibility_timeout_ms / 2000
        ticks = 0
        while True:
            await asyncio.sleep(period_s)
            if not self.link.connected:
                continue
            ticks += 1
            if ticks % CONSUMER_SWEEP_TICKS == 0:
                await self._forget_idle_consumers(key)
            await self._renew_claims(name)
            await self._slots[name].acquire()
            try:
                got: Any = await self.link.client.xautoclaim(
                    key, GROUP, self.worker_id, min_idle_time=self._dist.visibility_timeout_ms, count=max_batch
                )
            except REDIS_ERRORS as exc:  # NOGROUP included: the consume loop recreates the group
                self._slots[name].release()
                if not isinstance(exc, ResponseError):
                    self.link.lost(exc)
                continue
            entries: list[Entry] = [e for e in got[1] if e[1]]
            if entries:
                self._metrics.redis_jobs_redelivered_total.labels(backend=name).inc(len(entries))
                logger.warning("%s: re-delivered %d jobs left unacknowledged by another worker", name, len(entries))
            self._start_batch(name, entries)

    async def _renew_claims(self, name: str) -> None:
        """Reset the idle time of the jobs this worker still runs, so that a batch slower than the
        visibility timeout is not taken over while its worker is alive (XCLAIM JUSTID to itself)."""
        held: list[StreamIdT] = list(self._held[name])
        if not held:
            return
        try:
            await self.link.client.xclaim(jobs_key(name), GROUP, self.worker_id, 0, held, justid=True)
        except REDIS_ERRORS as exc:
            logger.debug("%s: claims not renewed: %s", name, exc)

    async def _forget_idle_consumers(self, key: str) -> None:
        """Delete consumers without pending jobs, silent for 10 worker TTLs (dead workers' names; a
        live one deleted by mistake is recreated by its next read)."""
        idle_ms = 10 * self._dist.worker_ttl_ms
        try:
            consumers: Any = await self.link.client.xinfo_consumers(key, GROUP)
            for c in consumers:
                name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                if name != self.worker_id and c["pending"] == 0 and c["idle"] > idle_ms:
                    await self.link.client.xgroup_delconsumer(key, GROUP, name)
        except REDIS_ERRORS as exc:  # NOGROUP included: nothing to sweep yet
            logger.debug("%s: consumer sweep skipped: %s", key, exc)

    async def _ensure_group(self, key: str) -> None:
        backoff = self.link.backoff()
        while True:
            try:
                await self.link.client.xgroup_create(key, GROUP, id="0", mkstream=True)
                return
            except ResponseError as exc:
                if "BUSYGROUP" in str(exc):
                    return
                logger.error("%s: cannot create consumer group %s: %s", key, GROUP, exc)
                await asyncio.sleep(backoff.next())
            except REDIS_ERRORS as exc:
                self.link.lost(exc)
                await asyncio.sleep(backoff.next())

    # -- batches ---------------------------------------------------------------------------------
    def _start_batch(self, name: str, entries: list[Entry]) -> None:
        """Run `entries` in a task that frees the batch slot when done (at once when empty)."""
        if not entries:
            self._slots[name].release()
            return
        task = asyncio.create_task(self._batch(name, entries))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _batch(self, name: str, entries: list[Entry]) -> None:
        key = jobs_key(name)
        held = {entry_id for entry_id, _ in entries}
        self._held[name] |= held
        try:
            done: list[bytes] = []
            jobs: list[tuple[bytes, Job]] = []
            now = time.time()
            for entry_id, fields in entries:
                try:
                    job = decode_job(fields)
                except (KeyError, ValueError) as exc:
                    logger.error("%s: malformed job %s dropped: %s", name, entry_id, exc)
                    done.append(entry_id)
                    continue
                if job.expired(now):
                    self._count(name, "expired")
                    done.append(entry_id)
                    continue
                jobs.append((entry_id, job))
            results = await self._execute(name, [job for _, job in jobs])
            pipe = self.link.client.pipeline(transaction=False)
            for (entry_id, job), result in zip(jobs, results, strict=True):
                pipe.xadd(
                    job.reply_to,
                    encode_reply(job.id, self.worker_id, result),  # type: ignore[arg-type]
                    maxlen=self._dist.reply_maxlen,
                    approximate=True,
                )
                pipe.pexpire(job.reply_to, REPLY_STREAM_TTL_MS)
                done.append(entry_id)
                self._count(name, "failed" if isinstance(result, ServeError) else "done")
            if done:
                pipe.xack(key, GROUP, *done)
            await pipe.execute()
        except REDIS_ERRORS as exc:  # the jobs stay pending: re-delivered after the visibility timeout
            self.link.lost(exc)
        except Exception:
            logger.exception("%s: a batch of %d jobs failed", name, len(entries))
        finally:
            self._held[name] -= held
            self._slots[name].release()

    async def _execute(self, name: str, jobs: list[Job]) -> list[PoseOutcome | ServeError]:
        """Decode all of `jobs` together, then queue them into the batcher at once: one model batch."""
        if not jobs:
            return []
        prepared = await asyncio.gather(*(self._prepare(name, job) for job in jobs), return_exceptions=True)
        return list(
            await asyncio.gather(
                *(self._infer(p) if isinstance(p, tuple) else _failed(p) for p in prepared),
            )
        )

    async def _prepare(self, name: str, job: Job) -> tuple[LocalAdmitted, Prepared, int, int, float]:
        deadline = time.monotonic() + (job.deadline - time.time())
        admitted = await self._local.admit(name)
        try:
            prepared, width, height = await self._local.prepare(admitted, job.image, deadline=deadline)
        except BaseException:
            admitted.release()
            raise
        return admitted, prepared, width, height, deadline

    async def _infer(self, p: tuple[LocalAdmitted, Prepared, int, int, float]) -> PoseOutcome | ServeError:
        admitted, prepared, width, height, deadline = p
        try:
            result = await self._local.infer(admitted, prepared, deadline=deadline)
        except BaseException as exc:
            return await _failed(exc)
        finally:
            admitted.release()
        return outcome(admitted, result, width, height)

    def _count(self, name: str, what: str) -> None:
        self._metrics.redis_jobs_total.labels(backend=name, outcome=what).inc()


async def _failed(exc: BaseException) -> ServeError:
    """The typed failure a job's reply carries for what running it raised."""
    if isinstance(exc, ServeError):
        return exc
    if isinstance(exc, TimeoutError):
        return DeadlineExceededError("no result before the request's deadline")
    if isinstance(exc, asyncio.CancelledError):
        raise exc
    logger.error("a job failed unexpectedly", exc_info=exc)
    return BackendUnavailableError(f"the worker failed to run the job ({type(exc).__name__}); see its log")
