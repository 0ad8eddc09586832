"""Admission control: would one more item start within `max_queue_delay_ms`?

Pure bookkeeping like `service.batching` (no threads, no I/O; the clock is injected). The engine
keeps one `AdmissionControl` per stage under its lock and tells it what happens: items reserved
by callers that are still reading and decoding their input, batches started and finished on each
worker. From that and an estimate of batch service time (EWMA of measured batch durations per
batch size) it simulates the workers draining what is ahead of a new item and answers whether the
item's batch would start within the bound. A refusal costs nothing: callers ask before reading
their input. `drain_s` (when everything already accepted is done) gives clients a Retry-After.

The bound is a queue timeout with rejection (Triton's queue policy `default_timeout_microseconds`
with `REJECT`), not Triton's `max_queue_delay_microseconds`, which is our batching wait
`max_wait_ms`.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Literal

__all__ = ["AdmissionControl", "BatchTimes", "Decision"]


class BatchTimes:
    """EWMA of measured batch durations (s), per batch size.

    A size never measured is estimated from the nearest measured size, scaled linearly with the
    number of items (on a CPU a batch costs about its items; on a GPU this overestimates, which
    refuses early until that size is measured).
    """

    def __init__(self, alpha: float = 0.3) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self._ewma: dict[int, float] = {}

    def observe(self, size: int, seconds: float) -> None:
        previous = self._ewma.get(size)
        self._ewma[size] = seconds if previous is None else previous + self.alpha * (seconds - previous)

    def seconds(self, size: int) -> float | None:
        """Estimated duration of a batch of `size` items; None before any measurement."""
        if size in self._ewma:
            return self._ewma[size]
        if not self._ewma:
            return None
        nearest = min(self._ewma, key=lambda s: (abs(s - size), -s))
        return self._ewma[nearest] * size / nearest


@dataclass(frozen=True)
class Decision:
    """`wait_s`: estimated wait before a new item's batch starts; `drain_s`: until all accepted
    work (queued, reserved, running) is done. Both inf without a live worker."""

    admitted: bool
    wait_s: float
    drain_s: float
    reason: Literal["admitted", "items", "delay", "no_workers"]


class AdmissionControl:
    """Counts reserved and running work of one stage and decides admission.

    `max_queue` bounds queued + reserved items; `max_queue_delay_ms` (None = no bound) bounds the
    estimated wait of a new item. An idle worker with nothing ahead always admits.
    """

    def __init__(
        self,
        *,
        max_batch: int,
        max_queue: int,
        max_queue_delay_ms: float | None,
        clock: Callable[[], float],
        alpha: float = 0.3,
    ) -> None:
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_delay_s = None if max_queue_delay_ms is None else max_queue_delay_ms / 1000.0
        self.times = BatchTimes(alpha)
        self.reserved = 0
        self._clock = clock
        self._running: dict[Hashable, tuple[int, float]] = {}

    # -- what happened ---------------------------------------------------------------------------
    def reserve(self, *, queued: int, workers: int) -> Decision:
        """`decide`, and hold a slot when admitted (the caller queues its item later or `release`s)."""
        decision = self.decide(queued=queued, workers=workers)
        if decision.admitted:
            self.reserved += 1
        return decision

    def release(self) -> None:
        """A reserved slot is gone: its item was queued, or its caller gave up."""
        if self.reserved <= 0:
            raise RuntimeError("release without a reservation")
        self.reserved -= 1

    def started(self, worker: Hashable, size: int) -> None:
        """`worker` started a batch of `size` items now."""
        self._running[worker] = (size, self._clock())

    def finished(self, worker: Hashable) -> float:
        """`worker` finished its batch: the duration (s) is measured and folded into the estimate."""
        size, started_at = self._running.pop(worker)
        seconds = self._clock() - started_at
        self.times.observe(size, seconds)
        return seconds

    def abandoned(self, worker: Hashable) -> None:
        """`worker` stopped without finishing its batch (it died): nothing is measured."""
        self._running.pop(worker, None)

    @property
    def running_items(self) -> int:
        return sum(size for size, _ in self._running.values())

    # -- the decision ----------------------------------------------------------------------------
    def decide(self, *, queued: int, workers: int) -> Decision:
        """Would one more item start within the bound, given `queued` items waiting in the batcher
        and `workers` live workers?"""
        if workers <= 0:
            return Decision(False, math.inf, math.inf, "no_workers")
        ahead = queued + self.reserved
        wait_s, drain_s = self._simulate(ahead, workers)
        if ahead >= self.max_queue:
            return Decision(False, wait_s, drain_s, "items")
        if self.max_delay_s is not None and wait_s > self.max_delay_s:
            return Decision(False, wait_s, drain_s, "delay")
        return Decision(True, wait_s, drain_s, "admitted")

    def drain_s(self, *, queued: int, workers: int) -> float:
        """Estimated seconds until everything queued, reserved and running is done."""
        if workers <= 0:
            return math.inf
        return self._simulate(queued + self.reserved, workers)[1]

    def _simulate(self, ahead: int, workers: int) -> tuple[float, float]:
        """(start of a new item's batch, end of all work) in seconds from now: the `ahead` items go
        in full batches to whichever worker frees first; the new item joins the last partial batch."""
        now = self._clock()
        free = [max(0.0, started + self._batch_s(size) - now) for size, started in self._running.values()]
        free += [0.0] * max(0, workers - len(free))
        heapq.heapify(free)
        full, rest = divmod(ahead, self.max_batch)
        batch_s = self._batch_s(self.max_batch)
        for _ in range(full):
            heapq.heapreplace(free, free[0] + batch_s)
        start_s = free[0]
        if rest:
            heapq.heapreplace(free, free[0] + self._batch_s(rest))
        return start_s, max(free)

    def _batch_s(self, size: int) -> float:
        estimate = self.times.seconds(size)
        return 0.0 if estimate is None else estimate
