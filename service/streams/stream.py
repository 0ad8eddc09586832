"""One camera subscription's state (`Stream`), its snapshot for the API, and a WebSocket client's queue."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import Counter

from service.backends.topdown import DetectionCadence
from service.schemas import SmoothingOptions, TrackingOptions
from service.streams.errorlog import ThrottledLog
from service.streams.reader import CameraReader
from service.streams.states import FrameOutcome, StreamState
from service.streams.urls import redact
from service.streams.watchdog import ReaderWatchdog
from service.tracking.one_euro import OneEuroConfig
from service.tracking.session import TrackingSession
from service.tracking.tracker import TrackerConfig

__all__ = ["ClientQueue", "Stream", "StreamSnapshot"]


class ClientQueue:
    """A bounded per-client message queue: when full, the oldest message is dropped and counted."""

    def __init__(self, maxsize: int, on_drop: Callable[[], None]) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize)
        self._on_drop = on_drop
        self.dropped = 0

    def put(self, message: str | None) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
            self._on_drop()
        self._queue.put_nowait(message)

    def close(self) -> None:
        """No more messages: `get` returns None once the queued ones are consumed."""
        self.put(None)

    async def get(self) -> str | None:
        return await self._queue.get()


@dataclass(frozen=True)
class StreamSnapshot:
    """A stream's figures at one instant, unrounded (`schemas.StreamInfo` is its REST form)."""

    id: str
    name: str
    url_redacted: str
    backend: str
    max_fps: float
    state: StreamState
    created_at: float
    """wall clock (Unix s)"""
    input_fps: float
    result_fps: float
    last_frame_age_s: float | None
    reconnects: int
    reader_restarts: int
    frames: dict[FrameOutcome, int]
    reader_cpu_s: float
    ws_clients: int
    tracking: TrackingOptions
    smoothing: SmoothingOptions
    skeleton_only: bool


@dataclass(eq=False)
class Stream:
    id: str
    name: str
    url: str
    backend: str
    max_fps: float
    created_at: float
    reader: CameraReader
    watchdog: ReaderWatchdog
    error_log: ThrottledLog
    """per-frame failures of this stream (rate-limited)"""
    clients: set[ClientQueue] = field(default_factory=set)
    outcomes: dict[FrameOutcome, int] = field(default_factory=dict)
    results_at: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    last_seq: int = 0
    reconnects_counted: int = 0
    """reader reconnects already added to the `stream_reconnects_total` counter"""
    stalled: bool = False
    task: asyncio.Task[None] | None = None
    new_frame: asyncio.Event = field(default_factory=asyncio.Event)
    tracking: TrackingOptions = field(default_factory=TrackingOptions)
    smoothing: SmoothingOptions = field(default_factory=SmoothingOptions)
    skeleton_only: bool = False
    """no frame pixels are kept after inference: each frame is released once inferred; no preview"""
    tracks: TrackingSession | None = None
    """the tracker and filters between frames (None when neither tracking nor smoothing is on)"""
    det_every_n: int = 1
    """top-down backends: the person detector runs on every n-th frame (1 = every frame)"""
    cadence: DetectionCadence | None = None
    """the detector schedule and carried persons (top-down backends with `det_every_n` > 1)"""
    frame_counters: dict[FrameOutcome, Counter] = field(default_factory=dict)
    """this stream's `stream_frames_total` children by outcome (no label lookup per frame)"""

    def __post_init__(self) -> None:
        if self.tracks is None and (self.tracking.enabled or self.smoothing.enabled):
            tracker = TrackerConfig(max_age_frames=self.tracking.max_age_frames, min_hits=self.tracking.min_hits)
            one_euro = None
            if self.smoothing.enabled:
                sm = self.smoothing
                one_euro = OneEuroConfig(min_cutoff=sm.min_cutoff, beta=sm.beta, d_cutoff=sm.d_cutoff)
            self.tracks = TrackingSession(tracker, one_euro)

    @property
    def state(self) -> StreamState:
        if self.stalled and self.reader.state == StreamState.LIVE:
            return StreamState.RECONNECTING
        return self.reader.state

    def result_fps(self, window_s: float = 2.0) -> float:
        now = time.monotonic()
        recent = [t for t in self.results_at if now - t <= window_s]
        return 0.0 if len(recent) < 2 else (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)

    def snapshot(self) -> StreamSnapshot:
        last = self.reader.last_frame_mono
        return StreamSnapshot(
            id=self.id,
            name=self.name,
            url_redacted=redact(self.url),
            backend=self.backend,
            max_fps=self.max_fps,
            state=self.state,
            created_at=self.created_at,
            input_fps=self.reader.input_fps(),
            result_fps=self.result_fps(),
            last_frame_age_s=None if last is None else time.monotonic() - last,
            reconnects=self.reader.reconnects,
            reader_restarts=self.watchdog.restarts,
            frames=dict(self.outcomes),
            reader_cpu_s=self.reader.cpu_s,
            ws_clients=len(self.clients),
            tracking=self.tracking,
            smoothing=self.smoothing,
            skeleton_only=self.skeleton_only,
        )
