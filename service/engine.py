"""Executes batches: one `StageRunner` per (backend, stage) = a DynamicBatcher + worker threads.

The batcher decides what runs together; the workers only execute (schedule -> execute -> update).
Each worker owns one model session. Callers get a `concurrent.futures.Future` per item; a caller
that gives up cancels it, which frees its queue slot. Items past their deadline fail with
`DeadlineExceededError` before inference. A failing batch fails only its own items.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

from service.batching import DynamicBatcher, Pending
from service.config import BackendSettings
from service.errors import DeadlineExceededError
from service.metrics import Metrics

__all__ = ["ItemResult", "StageRunner"]

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")
Session = TypeVar("Session")


@dataclass(frozen=True)
class ItemResult(Generic[Out]):
    value: Out
    queue_s: float
    inference_s: float
    batch_size: int


@dataclass(eq=False)
class _Job(Generic[In, Out]):
    payload: In
    future: Future[ItemResult[Out]]


class StageRunner(Generic[In, Out, Session]):
    """`run_batch(session, payloads) -> (one output per payload, seconds in the model itself)`."""

    def __init__(
        self,
        *,
        backend: str,
        stage: str,
        settings: BackendSettings,
        sessions: Sequence[Session],
        run_batch: Callable[[Session, list[In]], tuple[list[Out], float]],
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not sessions:
            raise ValueError("a stage needs at least one session")
        self.backend, self.stage = backend, stage
        self._clock = clock
        self._batcher: DynamicBatcher[_Job[In, Out]] = DynamicBatcher(
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            clock=clock,
        )
        self._cond = threading.Condition()
        self._stopping = False
        self._run_batch = run_batch
        self._metrics = metrics
        self._labels = {"backend": backend, "stage": stage}
        self._threads = [
            threading.Thread(target=self._work, args=(s,), name=f"{backend}-{stage}-{i}", daemon=True)
            for i, s in enumerate(sessions)
        ]
        self._busy = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        for t in self._threads:
            t.start()
        self._metrics.workers.labels(state="idle").inc(len(self._threads))

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting work, fail what is queued, and join the workers."""
        with self._cond:
            self._stopping = True
            for p in self._batcher.drain():
                p.item.future.cancel()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
        self._metrics.queue_depth.labels(**self._labels).set(0)

    @property
    def alive_workers(self) -> int:
        return sum(t.is_alive() for t in self._threads)

    @property
    def worker_count(self) -> int:
        return len(self._threads)

    # -- submission ------------------------------------------------------------------------------
    def submit(self, payload: In, *, deadline: float, key: Hashable = None) -> Future[ItemResult[Out]]:
        """Queue one item (deadline on this runner's clock). Raises `QueueFullError` when full."""
        job: _Job[In, Out] = _Job(payload=payload, future=Future())
        with self._cond:
            if self._stopping:
                job.future.cancel()
                return job.future
            try:
                pending = self._batcher.submit(job, deadline=deadline, key=key)
            except Exception:
                self._metrics.items_dropped_total.labels(**self._labels, reason="overloaded").inc()
                raise
            self._metrics.queue_depth.labels(**self._labels).set(len(self._batcher))
            self._cond.notify()
        job.future.add_done_callback(lambda f: self._on_done(f, pending))
        return job.future

    def _on_done(self, future: Future[ItemResult[Out]], pending: Pending[_Job[In, Out]]) -> None:
        if not future.cancelled():
            return
        with self._cond:
            if self._batcher.remove(pending):
                self._metrics.items_dropped_total.labels(**self._labels, reason="cancelled").inc()
                self._metrics.queue_depth.labels(**self._labels).set(len(self._batcher))

    # -- workers ---------------------------------------------------------------------------------
    def _next_batch(self) -> list[Pending[_Job[In, Out]]] | None:
        with self._cond:
            while not self._stopping:
                for p in self._batcher.expire():
                    self._metrics.items_dropped_total.labels(**self._labels, reason="expired").inc()
                    if p.item.future.set_running_or_notify_cancel():
                        p.item.future.set_exception(
                            DeadlineExceededError(f"{self.backend}/{self.stage}: deadline passed while queued")
                        )
                batch = self._batcher.pop_batch()
                if batch:
                    self._metrics.queue_depth.labels(**self._labels).set(len(self._batcher))
                    return batch
                event_at = self._batcher.next_event_at()
                timeout = None if event_at is None else max(0.0, event_at - self._clock())
                self._cond.wait(timeout)
            return None

    def _work(self, session: Session) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            started = self._clock()
            live = [p for p in batch if p.item.future.set_running_or_notify_cancel()]
            if not live:
                continue
            self._metrics.workers.labels(state="idle").dec()
            self._metrics.workers.labels(state="busy").inc()
            try:
                self._execute(session, [p.item for p in live], [p.enqueued_at for p in live], started)
            finally:
                self._metrics.workers.labels(state="busy").dec()
                self._metrics.workers.labels(state="idle").inc()

    def _execute(self, session: Session, jobs: list[_Job[In, Out]], enqueued: list[float], started: float) -> None:
        try:
            outputs, inference_s = self._run_batch(session, [j.payload for j in jobs])
        except Exception as exc:
            logger.exception("%s/%s: batch of %d failed", self.backend, self.stage, len(jobs))
            for j in jobs:
                j.future.set_exception(exc)
            return
        self._metrics.batch_size.labels(**self._labels).observe(len(jobs))
        self._metrics.inference_seconds.labels(**self._labels).observe(inference_s)
        for job, enqueued_at, out in zip(jobs, enqueued, outputs, strict=True):
            queue_s = started - enqueued_at
            self._metrics.queue_wait_seconds.labels(**self._labels).observe(queue_s)
            job.future.set_result(ItemResult(value=out, queue_s=queue_s, inference_s=inference_s, batch_size=len(jobs)))
