"""Error logging that cannot flood: the first failure with its traceback, then at most one line per interval.

Per-frame failures use it at the stream scheduler's boundary (DESIGN §5 `error`: logged with its
traceback, rate-limited): a camera whose every frame fails writes one line per `interval_s`,
saying how many failures it held back, never one line per frame.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["ThrottledLog"]


class ThrottledLog:
    """`exception()` logs at most once per `interval_s`; the failures in between are only counted."""

    def __init__(
        self, logger: logging.Logger, interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._last_logged: float | None = None
        self.suppressed = 0
        """failures since the last logged line that were not logged"""
        self.total = 0

    def exception(self, msg: str, *args: object) -> bool:
        """Log the exception being handled (ERROR with traceback) unless one was logged within the interval.

        Call it from an `except` block. True when this call wrote a line.
        """
        self.total += 1
        now = self._clock()
        if self._last_logged is not None and now - self._last_logged < self._interval_s:
            self.suppressed += 1
            return False
        self._last_logged = now
        suppressed, self.suppressed = self.suppressed, 0
        if suppressed:
            self._logger.exception(msg + " (%d more since the last report, not logged)", *args, suppressed)
        else:
            self._logger.exception(msg, *args)
        return True
