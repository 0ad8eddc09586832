"""The vocabulary of camera streams, defined once: a stream's state and a frame's outcome.

Metric label values (`stream_state{state}`, `stream_frames_total{outcome}`), the REST and
WebSocket schemas and the scheduler's counting all derive from these enums (DESIGN §3, §5).
"""

from __future__ import annotations

import enum

__all__ = ["FrameOutcome", "StreamState"]


class StreamState(enum.StrEnum):
    """Where a camera stands: connecting | live | reconnecting | failed | stopped."""

    CONNECTING = "connecting"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    """the reader thread ended on an unexpected error; the manager's watchdog restarts it"""
    STOPPED = "stopped"


class FrameOutcome(enum.StrEnum):
    """What happened to one camera frame; every frame read gets exactly one."""

    PROCESSED = "processed"
    """inferred and sent to the stream's clients"""
    SKIPPED = "skipped"
    """not taken because of `max_fps` (a rate limit, never an overload)"""
    DROPPED_OVERLOAD = "dropped_overload"
    """allowed by `max_fps`, but the stream's slot or the backend could not take it"""
    DROPPED_STALE = "dropped_stale"
    """older than its deadline (`frame_max_age_ms`)"""
    DECODE_ERROR = "decode_error"
    """the image could not be converted for the model"""
    ERROR = "error"
    """anything else; logged with its traceback (rate-limited)"""

    @property
    def is_drop(self) -> bool:
        """Lost to an overload or a failure, not to a rate limit: all but processed and skipped."""
        return self not in (FrameOutcome.PROCESSED, FrameOutcome.SKIPPED)
