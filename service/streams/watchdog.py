"""Each camera heals alone: a reader whose thread ended in `failed` is restarted, with backoff.

A `CameraReader` reconnects by itself while its thread runs; the thread only ends (state
`failed`) on an unexpected error, e.g. a capture that raises while opening. Like Frigate's
watchdog, the stream manager's housekeeping then calls `ReaderWatchdog.check` for every camera,
which restarts that camera's reader after an exponential, jittered, bounded delay. Nothing here
touches another camera.
"""

from __future__ import annotations

import logging
import random

from service.streams.reader import CameraReader
from service.streams.states import StreamState

__all__ = ["ReaderWatchdog", "RestartBackoff"]

logger = logging.getLogger(__name__)


class RestartBackoff:
    """Delays between restarts of one camera's reader: `initial_s * 2**attempt`, at most `max_s`.

    Jitter takes up to 20 % off each delay, so cameras that failed together do not restart
    together, and no delay exceeds `max_s`. A reader that ran for `max_s` or longer before it
    failed had healed: the next delay starts from `initial_s` again.
    """

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay_s(self, uptime_s: float) -> float:
        """The delay before the next restart of a reader that ran `uptime_s` seconds, then failed."""
        if uptime_s >= self.max_s:
            self.attempt = 0
        base_s = min(self.max_s, self.initial_s * 2.0**self.attempt)
        self.attempt += 1
        return base_s * self._rng.uniform(0.8, 1.0)


class ReaderWatchdog:
    """Restarts one camera's reader once its thread has ended in `failed`; counts the restarts."""

    def __init__(self, reader: CameraReader, backoff: RestartBackoff) -> None:
        self._reader = reader
        self._backoff = backoff
        self.restarts = 0
        self.due_mono: float | None = None
        """when the pending restart happens (monotonic s); None when none is pending"""
        self.last_delay_s: float | None = None

    def check(self, now_mono: float) -> bool:
        """Call it periodically; True when it restarted the reader just now.

        A failed reader is first given a restart time, and restarted at the first check after it.
        Live, connecting, reconnecting and stopped readers are left alone.
        """
        reader = self._reader
        if reader.alive or reader.state != StreamState.FAILED:
            return False
        if self.due_mono is None:
            uptime_s = now_mono - (reader.started_mono or now_mono)
            self.last_delay_s = self._backoff.next_delay_s(uptime_s)
            self.due_mono = now_mono + self.last_delay_s
            logger.warning(
                "camera %s: reader failed after %.1f s; restart %d in %.1f s",
                reader.name,
                uptime_s,
                self.restarts + 1,
                self.last_delay_s,
            )
            return False
        if now_mono < self.due_mono or not reader.restart():
            return False
        self.due_mono = None
        self.restarts += 1
        logger.info("camera %s: reader restarted (%d so far)", reader.name, self.restarts)
        return True
