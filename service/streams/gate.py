"""`FrameGate`: how many camera frames may be in a backend at once, granted in arrival order.

Each stream has at most one frame in flight; without a gate, N cameras on a backend that runs one
image at a time queue N frames, and every result is about N inference times old (on a 2-core CPU,
6 cameras at 70 ms an image: capture->result age p50 520 ms). Through the gate a stream waits
before it takes a frame, and takes the newest one when its turn comes, so a frame waits for at
most the images already in the backend (the manager lets in twice what it runs at once): results
stay about as fresh at any number of cameras, and each camera's share of the backend's rate
shrinks instead (what an overloaded camera must lose in any case: DESIGN's latest-frame policy).
On that CPU, 8 real RTSP cameras at 25 fps: age p99 593-629 ms before, 263-295 ms through the
gate, results a second in all 9.2 and 10.6.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

__all__ = ["FrameGate"]


class FrameGate:
    """At most `capacity` holders at once; waiters are granted first come, first served.

    Unlike `asyncio.Semaphore`, the capacity can change while held (`resize`: the backend's
    shape is known only once it has loaded). Event-loop only (not thread-safe).
    """

    def __init__(self, capacity: int = 1) -> None:
        self._capacity = max(1, capacity)
        self._held = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def held(self) -> int:
        return self._held

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def resize(self, capacity: int) -> None:
        """Hold at most `capacity` (>= 1) from now on; holders past a smaller one keep their place."""
        self._capacity = max(1, capacity)
        self._grant()

    async def acquire(self) -> bool:
        """Take a place, waiting for one if none is free (cancellable: a cancelled waiter holds
        nothing). True when it had to wait."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._grant()  # a free place goes at once
        if waiter.done():
            return False
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # granted as it was cancelled: give it on
                self.release()
            else:
                with contextlib.suppress(ValueError):  # `_grant` may have dropped it already
                    self._waiters.remove(waiter)
            raise
        return True

    def release(self) -> None:
        """Give back one place (once per `acquire` that returned)."""
        if self._held <= 0:
            raise RuntimeError("FrameGate released more often than acquired")
        self._held -= 1
        self._grant()

    def _grant(self) -> None:
        while self._held < self._capacity and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._held += 1
                waiter.set_result(None)
