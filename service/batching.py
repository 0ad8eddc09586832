"""Dynamic batching: decides which queued items run together and when.

Pure bookkeeping (vLLM's scheduler habit): no threads, no I/O, no model. The clock is injected so
tests drive it by hand. The engine wraps a `DynamicBatcher` in a lock + condition and lets worker
threads pull batches from it.

Policy
- A batch is released when `max_batch` items wait, or when the oldest item has waited
  `max_wait_ms` (Triton-style "max queue delay").
- Items carry a deadline; items past it are removed by `expire()` and never reach inference.
- The queue is bounded in time: an item that has waited `max_queue_delay_ms` without its batch
  starting is removed by `expire_delayed()` (so every item that starts waited less than that).
- The queue is bounded: `submit` raises `QueueFullError` at `max_queue` items.
- Fairness: items are grouped by `key` (a camera, a client); a batch takes one item per key in
  turn, keys ordered by the age of their oldest item, so one busy camera cannot starve others.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from service.errors import QueueFullError

__all__ = ["DynamicBatcher", "Pending"]

T = TypeVar("T")
_ids = itertools.count()


@dataclass(eq=False)
class Pending(Generic[T]):
    """One queued item. Times are the injected clock's seconds."""

    item: T
    key: Hashable
    enqueued_at: float
    deadline: float
    start_by: float = math.inf
    seq: int = field(default_factory=lambda: next(_ids))


class DynamicBatcher(Generic[T]):
    """Bounded multi-key queue that releases batches by size or by age."""

    def __init__(
        self,
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        clock: Callable[[], float],
        max_queue_delay_ms: float | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_queue < max_batch:
            raise ValueError("max_queue must be >= max_batch")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        if max_queue_delay_ms is not None and max_queue_delay_ms <= max_wait_ms:
            raise ValueError("max_queue_delay_ms must be > max_wait_ms")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.max_delay_s = math.inf if max_queue_delay_ms is None else max_queue_delay_ms / 1000.0
        self._clock = clock
        self._queues: OrderedDict[Hashable, deque[Pending[T]]] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def submit(self, item: T, *, deadline: float, key: Hashable = None, since: float | None = None) -> Pending[T]:
        """Queue `item`; raises `QueueFullError` when `max_queue` items already wait.

        `since` (clock seconds, default now) starts the item's `max_queue_delay_ms`: the time it
        was admitted, so that reading and decoding its input count against the bound too.
        """
        if self._size >= self.max_queue:
            raise QueueFullError(f"queue full ({self.max_queue} items waiting)")
        now = self._clock()
        start_by = (now if since is None else min(since, now)) + self.max_delay_s
        pending = Pending(item=item, key=key, enqueued_at=now, deadline=deadline, start_by=start_by)
        self._queues.setdefault(key, deque()).append(pending)
        self._size += 1
        return pending

    def remove(self, pending: Pending[T]) -> bool:
        """Drop one queued item (its caller gave up); False when it is no longer queued."""
        queue = self._queues.get(pending.key)
        if queue is None:
            return False
        try:
            queue.remove(pending)
        except ValueError:
            return False
        self._size -= 1
        if not queue:
            del self._queues[pending.key]
        return True

    def expire(self) -> list[Pending[T]]:
        """Remove and return every item whose deadline has passed."""
        now = self._clock()
        return self._remove_where(lambda p: p.deadline <= now)

    def expire_delayed(self) -> list[Pending[T]]:
        """Remove and return every item that has waited `max_queue_delay_ms` (or more) since it was
        admitted (`submit`'s `since`) without starting."""
        now = self._clock()
        return self._remove_where(lambda p: p.start_by <= now)

    def _remove_where(self, gone: Callable[[Pending[T]], bool]) -> list[Pending[T]]:
        removed: list[Pending[T]] = []
        for key in list(self._queues):
            queue = self._queues[key]
            alive = deque(p for p in queue if not gone(p))
            if len(alive) != len(queue):
                removed.extend(p for p in queue if gone(p))
                if alive:
                    self._queues[key] = alive
                else:
                    del self._queues[key]
        self._size -= len(removed)
        return removed

    def oldest_enqueued_at(self) -> float | None:
        if not self._queues:
            return None
        return min(q[0].enqueued_at for q in self._queues.values())

    def next_event_at(self) -> float | None:
        """Clock time at which `pop_batch` may next return something (a batch or an expiry by
        deadline or queue delay).

        None when empty; a time <= now when a batch is ready already.
        """
        oldest = self.oldest_enqueued_at()
        if oldest is None:
            return None
        if self._size >= self.max_batch:
            return oldest
        earliest = min(min(p.deadline, p.start_by) for q in self._queues.values() for p in q)
        return min(oldest + self.max_wait_s, earliest)

    def ready(self) -> bool:
        """True when a batch should be released now."""
        oldest = self.oldest_enqueued_at()
        if oldest is None:
            return False
        return self._size >= self.max_batch or self._clock() >= oldest + self.max_wait_s

    def drain(self) -> list[Pending[T]]:
        """Remove and return everything queued (shutdown)."""
        items = [p for queue in self._queues.values() for p in queue]
        self._queues.clear()
        self._size = 0
        return items

    def pop_batch(self, *, force: bool = False) -> list[Pending[T]]:
        """Release up to `max_batch` items if ready (or `force`), fair across keys; else []."""
        if not (force or self.ready()):
            return []
        batch: list[Pending[T]] = []
        keys = sorted(self._queues, key=lambda k: self._queues[k][0].enqueued_at)
        while len(batch) < self.max_batch and keys:
            for key in list(keys):
                queue = self._queues[key]
                batch.append(queue.popleft())
                if not queue:
                    del self._queues[key]
                    keys.remove(key)
                if len(batch) == self.max_batch:
                    break
        self._size -= len(batch)
        return batch
