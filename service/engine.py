"""Executes batches: one `StageRunner` per (backend, stage) = a DynamicBatcher + worker threads.

The batcher decides what runs together; the workers only execute (schedule -> execute -> update).
Each worker owns one model session. Callers get a `concurrent.futures.Future` per item; a caller
that gives up cancels it, which frees its queue slot. Items past their deadline fail with
`DeadlineExceededError` before inference. A failing batch fails only its own items.

Admission (`service.admission`): `admit()` answers, before the caller reads or decodes anything,
whether a new item would start within `max_queue_delay_ms`, and reserves its slot (a `Ticket`) so
that concurrent admissions count it. Items that nevertheless wait longer, from admission (reading
and decoding their input included) to their batch start, are dropped before inference with
`QueueDelayError`. A `submit` without a ticket is admitted the same way, and waits from `submit`.

Supervision: a worker thread that dies (an exception escaping its batch loop) fails the items of
the batch it held with `WorkerLostError` (retryable), and the stage's supervisor thread restarts it
with backoff at a bounded rate (`service.supervision`); past that the worker stays down, and a
stage without live workers refuses new items and is named by `problem()` (readiness).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from service.admission import AdmissionControl, Decision
from service.batching import DynamicBatcher, Pending
from service.config import BackendSettings
from service.errors import (
    BackendUnavailableError,
    DeadlineExceededError,
    QueueDelayError,
    QueueFullError,
    ServeError,
    WorkerLostError,
)
from service.metrics import Metrics
from service.priority import lower_this_thread
from service.supervision import RestartBudget, Supervisor

__all__ = ["ItemResult", "StageRunner", "Ticket"]

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")
Session = TypeVar("Session")

WORKER_LOST_RETRY_AFTER_S = 1.0


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


@dataclass(eq=False)
class Ticket:
    """A slot reserved by `StageRunner.admit`: pass it to `submit`, or `release` it (idempotent)."""

    _release: Callable[[Ticket], None]
    admitted_at: float
    """the runner's clock at admission: the item's `max_queue_delay_ms` counts from here"""
    held: bool = True

    def release(self) -> None:
        self._release(self)


@dataclass(eq=False)
class _Worker(Generic[Session]):
    """One worker slot: its session, its current thread, the batch it holds."""

    index: int
    session: Session
    wake: threading.Condition
    """shares the runner's lock: notified when an item arrives and this worker is the one woken"""
    thread: threading.Thread | None = None
    dead: bool = False
    held: list[Pending[Any]] = field(default_factory=list)


def _fail(future: Future[Any], exc: BaseException) -> None:
    """Fail a queued or running future unless its caller cancelled it already."""
    if future.done():
        return
    with contextlib.suppress(InvalidStateError):  # cancelled meanwhile by its caller
        future.set_exception(exc)


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
        restarts: RestartBudget | None = None,
    ) -> None:
        if not sessions:
            raise ValueError("a stage needs at least one session")
        self.backend, self.stage = backend, stage
        self.max_queue_delay_ms = settings.max_queue_delay_ms
        self.max_batch = settings.max_batch
        self._nice = settings.worker_nice
        self._clock = clock
        self._batcher: DynamicBatcher[_Job[In, Out]] = DynamicBatcher(
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            max_queue_delay_ms=settings.max_queue_delay_ms,
            clock=clock,
        )
        self._admission = AdmissionControl(
            max_batch=settings.max_batch,
            max_queue=settings.max_queue,
            max_queue_delay_ms=settings.max_queue_delay_ms,
            clock=clock,
        )
        self._lock = threading.RLock()  # re-entered: cancelling a future under it runs `_on_done`
        self._stopping = False
        self._started = False
        self._run_batch = run_batch
        self._metrics = metrics
        self._labels = {"backend": backend, "stage": stage}
        self._workers = [
            _Worker(index=i, session=s, wake=threading.Condition(self._lock)) for i, s in enumerate(sessions)
        ]
        self._idle: list[_Worker[Session]] = []
        """workers waiting for items, the one that went idle last on top: it is woken first"""
        self._given_up = 0
        self._supervisor: Supervisor[_Worker[Session]] = Supervisor(
            f"{backend}-{stage}-supervisor",
            budget=restarts or RestartBudget(),
            clock=clock,
            restart=self._restart,
            give_up=self._give_up,
        )

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            for worker in self._workers:
                worker.thread = self._thread(worker)
                worker.thread.start()
            self._started = True
        self._supervisor.start()
        self._metrics.workers.labels(state="idle").inc(len(self._workers))
        # the alerting counters exist from 0, so rate()/increase() see their first increment too
        self._metrics.worker_restarts_total.labels(**self._labels)
        for reason in ("overloaded", "queue_delay"):
            self._metrics.items_dropped_total.labels(**self._labels, reason=reason)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting work, fail what is queued, and join the workers and the supervisor."""
        with self._lock:
            self._stopping = True
            for p in self._batcher.drain():
                p.item.future.cancel()
            for worker in self._workers:
                worker.wake.notify_all()
        deadline = time.monotonic() + timeout_s
        self._supervisor.stop(timeout_s)
        for t in [w.thread for w in self._workers if w.thread is not None]:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
        self._metrics.queue_depth.labels(**self._labels).set(0)

    def _thread(self, worker: _Worker[Session]) -> threading.Thread:
        name = f"{self.backend}-{self.stage}-{worker.index}"
        return threading.Thread(target=self._run, args=(worker,), name=name, daemon=True)

    @property
    def alive_workers(self) -> int:
        return sum(not w.dead and w.thread is not None and w.thread.is_alive() for w in self._workers)

    @property
    def worker_count(self) -> int:
        return len(self._workers)

    def problem(self) -> str | None:
        """What readiness should report about this stage's workers; None when all are alive."""
        alive = self.alive_workers
        if alive == self.worker_count or not self._started:
            return None
        state = (
            "not restarted after repeated deaths (see the server log)" if self._given_up else "restarting after a death"
        )
        return f"backend {self.backend} stage {self.stage}: {alive} of {self.worker_count} workers alive, {state}"

    def _live_workers(self) -> int:
        """Workers that can take batches (before `start`, the ones that will)."""
        return self.alive_workers if self._started else self.worker_count

    def seed_batch_time(self, size: int, seconds: float) -> None:
        """A measured batch duration from before serving (warm-up), so that the first admissions
        already have an estimate."""
        with self._lock:
            self._admission.times.observe(size, seconds)

    # -- admission and submission ----------------------------------------------------------------
    def admit(self) -> Ticket:
        """Reserve a slot for an item the caller will `submit` once its input is ready.

        Raises `QueueDelayError` when the item would wait longer than `max_queue_delay_ms`,
        `QueueFullError` at `max_queue` items, `BackendUnavailableError` without a live worker;
        each carries `retry_after_s`. Cheap: call it before reading or decoding anything.
        """
        with self._lock:
            if self._stopping:
                raise BackendUnavailableError(f"backend {self.backend} is shutting down")
            decision = self._admission.reserve(queued=len(self._batcher), workers=self._live_workers())
            if not decision.admitted:
                self._metrics.items_dropped_total.labels(**self._labels, reason="overloaded").inc()
                raise self._refusal(decision)
            return Ticket(self._release, admitted_at=self._clock())

    def _release(self, ticket: Ticket) -> None:
        with self._lock:
            self._consume(ticket)

    def _consume(self, ticket: Ticket) -> None:
        if ticket.held:
            ticket.held = False
            self._admission.release()

    def _refusal(self, decision: Decision) -> ServeError:
        name = f"{self.backend}/{self.stage}"
        if decision.reason == "no_workers":
            if self._given_up:
                return BackendUnavailableError(f"{name}: no live worker (not restarted after repeated deaths)")
            return BackendUnavailableError(
                f"{name}: no live worker (restarting)", retry_after_s=WORKER_LOST_RETRY_AFTER_S
            )
        retry = f"retry in ~{decision.drain_s:.1f} s"
        if decision.reason == "items":
            return QueueFullError(
                f"{name}: queue full ({self._batcher.max_queue} items waiting or admitted); {retry}",
                retry_after_s=decision.drain_s,
            )
        return QueueDelayError(
            f"{name}: a new item would wait ~{decision.wait_s * 1000:.0f} ms, over max_queue_delay_ms="
            f"{self.max_queue_delay_ms:g}; {retry}",
            retry_after_s=decision.drain_s,
        )

    def submit(
        self, payload: In, *, deadline: float, key: Hashable = None, ticket: Ticket | None = None
    ) -> Future[ItemResult[Out]]:
        """Queue one item (deadline on this runner's clock) in the slot `ticket` reserved, or, without
        one, if admitted now (raises like `admit`)."""
        job: _Job[In, Out] = _Job(payload=payload, future=Future())
        with self._lock:
            if self._stopping:
                if ticket is not None:
                    self._consume(ticket)
                job.future.cancel()
                return job.future
            since = None  # an item admitted now waits from now
            if ticket is not None and ticket.held:
                self._consume(ticket)
                since = ticket.admitted_at
            else:
                decision = self._admission.decide(queued=len(self._batcher), workers=self._live_workers())
                if not decision.admitted:
                    self._metrics.items_dropped_total.labels(**self._labels, reason="overloaded").inc()
                    raise self._refusal(decision)
            try:
                pending = self._batcher.submit(job, deadline=deadline, key=key, since=since)
            except QueueFullError:
                self._metrics.items_dropped_total.labels(**self._labels, reason="overloaded").inc()
                raise
            self._metrics.queue_depth.labels(**self._labels).set(len(self._batcher))
            if self._idle:
                self._idle.pop().wake.notify()
        job.future.add_done_callback(lambda f: self._on_done(f, pending))
        return job.future

    def _on_done(self, future: Future[ItemResult[Out]], pending: Pending[_Job[In, Out]]) -> None:
        if not future.cancelled():
            return
        with self._lock:
            if self._batcher.remove(pending):
                self._metrics.items_dropped_total.labels(**self._labels, reason="cancelled").inc()
                self._metrics.queue_depth.labels(**self._labels).set(len(self._batcher))

    # -- workers ---------------------------------------------------------------------------------
    def _next_batch(self, worker: _Worker[Session]) -> tuple[list[Pending[_Job[In, Out]]], float] | None:
        """(batch, the time it was taken) once one is ready; the worker holds it from then on.

        An arriving item wakes the worker that went idle last (LIFO): below full load the same
        worker keeps taking items while its runtime's threads and caches are warm. Woken in turn
        (FIFO), two OpenVINO sessions on 2 cores each idled through the other's request at
        concurrency 1, and a session idle for 20 ms ran the next image 1.2 ms slower than one
        idle for 7 ms (16.7 vs 15.5 ms, movenet-multipose bf16)."""
        with self._lock:
            while not self._stopping:
                now = self._clock()
                self._drop_expired()
                batch = self._batcher.pop_batch()
                if batch:
                    worker.held = batch
                    self._metrics.queue_depth.labels(**self._labels).set(len(self._batcher))
                    return batch, now
                event_at = self._batcher.next_event_at()
                timeout = None if event_at is None else max(0.0, event_at - self._clock())
                self._idle.append(worker)
                try:
                    worker.wake.wait(timeout)
                finally:
                    if worker in self._idle:  # woken by its timeout (or at stop), not by an item
                        self._idle.remove(worker)
            return None

    def _drop_expired(self) -> None:
        """Fail queued items past their deadline, then those queued longer than max_queue_delay_ms."""
        name = f"{self.backend}/{self.stage}"
        self._fail_queued(self._batcher.expire(), DeadlineExceededError(f"{name}: deadline passed while queued"))
        delayed = self._batcher.expire_delayed()
        if delayed:
            drain_s = self._admission.drain_s(queued=len(self._batcher), workers=self._live_workers())
            drain_s = drain_s if math.isfinite(drain_s) else WORKER_LOST_RETRY_AFTER_S
            error = QueueDelayError(
                f"{name}: waited max_queue_delay_ms={self.max_queue_delay_ms:g} since admission without starting; "
                f"retry in ~{drain_s:.1f} s",
                retry_after_s=drain_s,
            )
            self._fail_queued(delayed, error, reason="queue_delay")

    def _fail_queued(self, items: list[Pending[_Job[In, Out]]], error: ServeError, reason: str = "expired") -> None:
        for p in items:
            self._metrics.items_dropped_total.labels(**self._labels, reason=reason).inc()
            if p.item.future.set_running_or_notify_cancel():
                p.item.future.set_exception(error)

    def _run(self, worker: _Worker[Session]) -> None:
        """Thread target: the batch loop. Anything escaping it is a death the supervisor handles."""
        lower_this_thread(self._nice)  # below the event loop: refusals and health checks stay prompt
        try:
            self._work(worker)
        except BaseException as exc:  # a death, not an error to propagate: the supervisor restarts
            self._on_death(worker, exc)

    def _work(self, worker: _Worker[Session]) -> None:
        while True:
            got = self._next_batch(worker)
            if got is None:
                return
            batch, taken_at = got
            live = [p for p in batch if p.item.future.set_running_or_notify_cancel()]
            if live:
                with self._lock:
                    self._admission.started(worker.index, len(live))
                self._metrics.workers.labels(state="idle").dec()
                self._metrics.workers.labels(state="busy").inc()
                try:
                    self._execute(worker.session, [p.item for p in live], [p.enqueued_at for p in live], taken_at)
                finally:
                    self._metrics.workers.labels(state="busy").dec()
                    self._metrics.workers.labels(state="idle").inc()
            with self._lock:
                worker.held = []
                if live:
                    self._admission.finished(worker.index)
            del got, batch, live  # no reference to the inputs (frame pixels) while waiting for the next batch

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

    # -- supervision -----------------------------------------------------------------------------
    def _on_death(self, worker: _Worker[Session], exc: BaseException) -> None:
        """In the dying thread: fail the batch it held (retryable) and hand it to the supervisor."""
        try:
            logger.error("%s/%s: worker %d died", self.backend, self.stage, worker.index, exc_info=exc)
            lost = WorkerLostError(
                f"{self.backend}/{self.stage}: the worker running this item died ({type(exc).__name__}); "
                "it is being restarted, retry",
                retry_after_s=WORKER_LOST_RETRY_AFTER_S,
            )
            with self._lock:
                worker.dead = True
                held, worker.held = worker.held, []
                self._admission.abandoned(worker.index)
            for p in held:
                _fail(p.item.future, lost)
            self._metrics.workers.labels(state="idle").dec()
        finally:
            self._supervisor.report(worker)

    def _restart(self, worker: _Worker[Session]) -> None:
        """(Supervisor) a new thread for `worker`, with the same session."""
        with self._lock:
            if self._stopping:
                return
            self._metrics.worker_restarts_total.labels(**self._labels).inc()  # counted before it takes work
            self._metrics.workers.labels(state="idle").inc()
            worker.dead = False
            worker.thread = self._thread(worker)
            worker.thread.start()
        logger.warning("%s/%s: worker %d restarted", self.backend, self.stage, worker.index)

    def _give_up(self, worker: _Worker[Session]) -> None:
        """(Supervisor) leave `worker` dead; without a live worker left, fail what is queued."""
        budget = self._supervisor.budget
        logger.error(
            "%s/%s: worker %d died again after %d restarts within %g s; not restarting it",
            self.backend,
            self.stage,
            worker.index,
            budget.max_restarts,
            budget.window_s,
        )
        with self._lock:
            self._given_up += 1
            if self.alive_workers:
                return
            error = BackendUnavailableError(f"{self.backend}/{self.stage}: no live worker")
            self._fail_queued(self._batcher.drain(), error, reason="no_workers")
            self._metrics.queue_depth.labels(**self._labels).set(0)
