"""What the API and the stream scheduler use of a loaded backend: `admit` (before reading the input),
`prepare` (in a thread), then `await infer` (or, for a backend that `queues_prepared`, `queue`
from that thread): both in `prepare_and_infer`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor, Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from models.card import ModelCard
from models.persons import Persons
from models.registry import ModelEntry
from models.runtime import Session
from models.transforms import Letterbox
from service.config import BackendSettings
from service.engine import ItemResult, StageRunner, Ticket
from service.metrics import Metrics

__all__ = ["LoadedBackend", "Prepared", "await_result", "prepare_and_infer"]

T = TypeVar("T")
In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True)
class Prepared:
    """One preprocessed image, ready to be batched (top-down keeps the image to cut crops from)."""

    tensor: np.ndarray
    geometry: Letterbox
    image_rgb: np.ndarray | None = None


async def await_result(future: Future[ItemResult[T]], wait_s: float) -> ItemResult[T]:
    """The item's result, waiting at most `wait_s` (TimeoutError)."""
    return await asyncio.wait_for(asyncio.wrap_future(future), timeout=max(0.0, wait_s))


async def prepare_and_infer(
    pool: Executor,
    backend: LoadedBackend,
    prepare: Callable[[], Prepared],
    *,
    deadline: float,
    wait_s: float,
    key: Hashable = None,
    ticket: Ticket | None = None,
) -> ItemResult[Persons]:
    """`prepare()` on `pool`, then `backend.infer` of it, waiting at most `wait_s` in all
    (TimeoutError). Errors of `prepare` and refusals of the backend are raised here.

    A backend that `queues_prepared` takes one hop fewer: the thread that prepared the image queues
    it itself (`queue`), and the event loop wakes once, for the result (at concurrency 1 about
    0.2 ms sooner, and 0.2 ms less of the event loop's time an image). A caller that gives up then
    drops its item: never prepared if no thread had started on it, else cancelled in the queue.
    """
    if not backend.queues_prepared:
        until = time.monotonic() + wait_s
        prepared = await asyncio.wait_for(
            asyncio.get_running_loop().run_in_executor(pool, prepare), timeout=max(0.0, wait_s)
        )
        return await backend.infer(prepared, deadline=deadline, wait_s=until - time.monotonic(), key=key, ticket=ticket)
    done: Future[ItemResult[Persons]] = Future()

    def work() -> None:
        if done.cancelled():  # the caller gave up while the image waited for a thread
            return
        try:
            queued = backend.queue(prepare(), deadline=deadline, key=key, ticket=ticket)
        except BaseException as exc:  # the caller's error (a bad image, a refusal): raised where it waits
            with contextlib.suppress(InvalidStateError):  # unless it gave up meanwhile
                done.set_exception(exc)
            return
        queued.add_done_callback(lambda f: _forward(f, done))
        done.add_done_callback(lambda d: queued.cancel() if d.cancelled() else None)  # gave up: drop the item

    pool.submit(work)
    return await asyncio.wait_for(asyncio.wrap_future(done), timeout=max(0.0, wait_s))


def _forward(queued: Future[ItemResult[Persons]], done: Future[ItemResult[Persons]]) -> None:
    """Give `done` the queued item's outcome, unless its waiter gave up meanwhile."""
    with contextlib.suppress(InvalidStateError):
        if queued.cancelled():
            done.cancel()
        elif (exc := queued.exception()) is not None:
            done.set_exception(exc)
        else:
            done.set_result(queued.result())


class LoadedBackend:
    """A backend with its sessions loaded and its workers running."""

    entry: ModelEntry
    card: ModelCard | None
    providers: list[str]
    runners: Sequence[StageRunner[Any, Any, Any]]
    runtime: str = "onnxruntime"
    """The inference runtime of its sessions (`models.runtimes`)."""
    precision: str = "fp32"
    """The precision variant it serves (single-stage backends; top-down ones run fp32)."""
    settings: BackendSettings | None = None
    """The settings it runs with, measured batch shape applied (None: the configured ones)."""
    input_side: int | None = None
    """The long side `prepare` resizes a whole image to (None: it needs the full-size image, e.g. to cut crops)."""

    @property
    def name(self) -> str:
        return self.entry.backend or self.entry.name

    def _runner(
        self,
        stage: str,
        settings: BackendSettings,
        sessions: Sequence[Session],
        run_batch: Callable[[Session, list[In]], tuple[list[Out], float]],
        metrics: Metrics,
    ) -> StageRunner[In, Out, Session]:
        """The batcher and worker threads of one stage of this backend (not started yet)."""
        return StageRunner(
            backend=self.name, stage=stage, settings=settings, sessions=sessions, run_batch=run_batch, metrics=metrics
        )

    @property
    def untrained(self) -> bool:
        """True when the served weights are a seed network's random initialisation."""
        return self.card is not None and self.card.untrained

    @property
    def entry_runner(self) -> StageRunner[Prepared, Any, Any]:
        """The stage whole images enter first; admission is decided there."""
        raise NotImplementedError

    @property
    def images_at_once(self) -> int:
        """Images its entry stage runs at once: every worker's batch full."""
        return self.entry_runner.worker_count * self.entry_runner.max_batch

    def admit(self) -> Ticket:
        """Reserve a slot for one image before reading or decoding it (see `StageRunner.admit`):
        raises an `OverloadedError` (with `retry_after_s`) when it would wait too long."""
        return self.entry_runner.admit()

    queues_prepared: ClassVar[bool] = False
    """whether one stage runs a prepared image, so that `queue` may hand it over from any thread"""

    def prepare(self, image_rgb: np.ndarray) -> Prepared:
        raise NotImplementedError

    def queue(
        self, prepared: Prepared, *, deadline: float, key: Hashable = None, ticket: Ticket | None = None
    ) -> Future[ItemResult[Persons]]:
        """`infer` without the wait, callable from any thread (backends that `queues_prepared`):
        the item's future (cancel it to drop the item); raises like `infer` when refused."""
        raise NotImplementedError

    async def infer(
        self, prepared: Prepared, *, deadline: float, wait_s: float, key: Hashable = None, ticket: Ticket | None = None
    ) -> ItemResult[Persons]:
        """Persons of one prepared image, in the slot `ticket` reserved (else admitted now).

        `deadline` (monotonic s) bounds the time spent queued; `wait_s` bounds the whole wait
        (raises TimeoutError; queued work is cancelled). Raises an `OverloadedError` subclass
        when refused or dropped for load (`QueueFullError`, `QueueDelayError`).
        """
        raise NotImplementedError

    @property
    def healthy(self) -> bool:
        return all(r.alive_workers == r.worker_count for r in self.runners)

    def problems(self) -> list[str]:
        """Stages with dead workers, named (readiness)."""
        return [p for r in self.runners if (p := r.problem()) is not None]

    @property
    def worker_count(self) -> int:
        return sum(r.worker_count for r in self.runners)

    def stop(self) -> None:
        for runner in self.runners:
            runner.stop()
