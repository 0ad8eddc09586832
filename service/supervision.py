"""Restarting dead worker threads: when (`RestartBudget`, pure: the caller passes the time of each
death) and by whom (`Supervisor`, one thread per stage)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["RestartBudget", "Supervisor"]

W = TypeVar("W")


class RestartBudget:
    """When to restart a dead worker: exponential backoff, and at most `max_restarts` within
    `window_s` (then give up: the stage stays down and readiness says so, like an OTP supervisor
    escalating). Pure: the caller passes the time of each death."""

    def __init__(
        self,
        *,
        max_restarts: int = 5,
        window_s: float = 60.0,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 5.0,
    ) -> None:
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._restarts: list[float] = []

    def on_death(self, now: float) -> float | None:
        """Seconds to wait before restarting, or None: too many restarts in the window, give up."""
        self._restarts = [t for t in self._restarts if now - t < self.window_s]
        if len(self._restarts) >= self.max_restarts:
            return None
        delay_s = min(self.backoff_max_s, self.backoff_initial_s * 2 ** len(self._restarts))
        self._restarts.append(now)
        return delay_s


class Supervisor(Generic[W]):
    """A thread that restarts the dead workers of one stage.

    The dying thread calls `report(worker)`; after the budget's backoff the supervisor calls
    `restart(worker)`, or `give_up(worker)` once the budget is spent. `stop` wakes it from a backoff.
    """

    def __init__(
        self,
        name: str,
        *,
        budget: RestartBudget,
        clock: Callable[[], float],
        restart: Callable[[W], None],
        give_up: Callable[[W], None],
    ) -> None:
        self.budget = budget
        self._clock = clock
        self._restart, self._give_up = restart, give_up
        self._deaths: queue.SimpleQueue[W | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        self._deaths.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def report(self, worker: W) -> None:
        """`worker` died (called from its own thread)."""
        self._deaths.put(worker)

    def _run(self) -> None:
        while True:
            worker = self._deaths.get()
            if worker is None or self._stop.is_set():
                return
            delay_s = self.budget.on_death(self._clock())
            if delay_s is None:
                self._give_up(worker)
            elif self._stop.wait(delay_s):
                return
            else:
                self._restart(worker)
