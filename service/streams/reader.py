"""One reader thread per camera: open with timeouts, keep only the newest frame, reconnect.

Each camera fails alone: a camera that never connects just keeps backing off (exponential, with
jitter) in its own thread. Only an unexpected error ends the thread (state `failed`); the stream
manager's watchdog then calls `restart()` (see `streams/watchdog.py`).

OpenCV ignores timeouts set after opening, so they are passed at creation
(`CAP_PROP_OPEN_TIMEOUT_MSEC`, `CAP_PROP_READ_TIMEOUT_MSEC`); a stalled server then makes
`read()` fail within the read timeout instead of blocking for 30 s.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from service.config import StreamSettings
from service.streams.states import StreamState

__all__ = ["CameraReader", "Capture", "Frame", "open_opencv"]

logger = logging.getLogger(__name__)


_RELEASED = np.zeros((0, 0, 3), np.uint8)
_RELEASED.flags.writeable = False


@dataclass(eq=False)
class Frame:
    """One decoded frame: (H, W, 3) uint8 BGR, its sequence number and capture times.

    Treated as immutable, except `release()`: skeleton-only streams drop the pixels once the frame
    is inferred, so no holder of the frame (the reader's newest-frame slot included) keeps them.
    """

    seq: int
    image_bgr: np.ndarray
    captured_at_ns: int
    """wall clock (for clients)"""
    captured_mono: float
    """monotonic seconds (for ages and deadlines)"""

    def release(self) -> None:
        """Drop the pixels: `image_bgr` becomes an empty (0, 0, 3) array."""
        self.image_bgr = _RELEASED

    @property
    def released(self) -> bool:
        return self.image_bgr is _RELEASED


class Capture(Protocol):
    def read(self) -> tuple[bool, np.ndarray | None]: ...
    def release(self) -> None: ...


class _FileCapture:
    """A local video played at its own frame rate, looping at the end (file:// sources)."""

    def __init__(self, cap: cv2.VideoCapture) -> None:
        self._cap = cap
        fps = cap.get(cv2.CAP_PROP_FPS)
        self._period_s = 1.0 / fps if 1.0 <= fps <= 240.0 else 1.0 / 25.0
        self._next = time.monotonic()

    def read(self) -> tuple[bool, np.ndarray | None]:
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._next = max(self._next + self._period_s, time.monotonic() - self._period_s)
        ok, frame = self._cap.read()
        if not ok:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._cap.read()
        return ok, frame

    def release(self) -> None:
        self._cap.release()


def open_opencv(url: str, settings: StreamSettings) -> Capture | None:
    """Open `url` with OpenCV's FFmpeg backend and timeouts set at creation; None if it fails."""
    if url.startswith("file://"):
        cap = cv2.VideoCapture(url[len("file://") :], cv2.CAP_FFMPEG)
        return _FileCapture(cap) if cap.isOpened() else None
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        settings.open_timeout_ms,
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        settings.read_timeout_ms,
        # decode in the reader's own thread: one core per camera at most, and its CPU is measurable
        cv2.CAP_PROP_N_THREADS,
        settings.decode_threads,
    ]
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        cap.release()
        return None
    return cap


class CameraReader:
    """Reads one camera in a daemon thread; `latest()` hands out the newest frame only."""

    def __init__(
        self,
        url: str,
        settings: StreamSettings,
        *,
        name: str,
        on_state: Callable[[StreamState], None] = lambda _: None,
        on_frame: Callable[[], None] = lambda: None,
        open_capture: Callable[[str, StreamSettings], Capture | None] = open_opencv,
        rng: random.Random | None = None,
    ) -> None:
        self.url, self.name = url, name
        self._settings = settings
        self._on_state = on_state
        self._on_frame = on_frame
        self._open = open_capture
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._latest: Frame | None = None
        self._seq = 0
        self._arrivals: deque[float] = deque(maxlen=256)
        self.state = StreamState.CONNECTING
        self.reconnects = 0
        self.cpu_s = 0.0
        self._cpu_start = 0.0
        self._cpu_before_s = 0.0
        self.last_frame_mono: float | None = None
        self.started_mono: float | None = None
        """when the current thread started (monotonic s)"""
        self._thread = threading.Thread(target=self._run, name=f"camera-{name}", daemon=True)

    # -- public --------------------------------------------------------------------------------
    def start(self) -> None:
        self.started_mono = time.monotonic()
        self._thread.start()

    def restart(self, join_timeout_s: float = 5.0) -> bool:
        """Run a fresh thread after the previous one ended (`failed`); frame numbers continue.

        False, and nothing started, when the reader was stopped, never started, or its thread still runs.
        """
        if self._stop.is_set() or self._thread.ident is None or self._thread.is_alive():
            return False
        self._thread.join(join_timeout_s)  # it has ended: this only reaps it
        self._thread = threading.Thread(target=self._run, name=self._thread.name, daemon=True)
        self._set_state(StreamState.RECONNECTING if self.frames_read else StreamState.CONNECTING)
        self.start()
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the thread to stop; a read blocked in FFmpeg returns within the read timeout."""
        self._stop.set()
        self._thread.join(timeout_s)
        self._set_state(StreamState.STOPPED)

    @property
    def frames_read(self) -> int:
        return self._seq

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def latest(self, after_seq: int = 0) -> Frame | None:
        """The newest frame if it is newer than `after_seq`, else None."""
        with self._lock:
            frame = self._latest
        return frame if frame is not None and frame.seq > after_seq else None

    def input_fps(self, window_s: float = 2.0) -> float:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._arrivals if now - t <= window_s]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)

    # -- thread ----------------------------------------------------------------------------------
    def _set_state(self, state: StreamState) -> None:
        if state != self.state:
            self.state = state
            self._on_state(state)

    def _backoff_s(self, attempt: int) -> float:
        base = min(self._settings.backoff_max_s, self._settings.backoff_initial_s * 2**attempt)
        return base * self._rng.uniform(0.8, 1.2)

    def _run(self) -> None:
        self._cpu_before_s = self.cpu_s  # earlier threads of this reader (restarts)
        self._cpu_start = time.thread_time()
        try:
            self._loop()
        except Exception:  # a bug in one camera's reader must not pass silently, nor spread
            logger.exception("camera %s: reader crashed", self.name)
            self._set_state(StreamState.FAILED)

    def _loop(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            cap = self._open(self.url, self._settings)
            got_frame = False
            if cap is not None:
                try:
                    got_frame = self._read_until_failure(cap)
                finally:
                    cap.release()
            if self._stop.is_set():
                break
            if got_frame:
                attempt = 0
                self.reconnects += 1
                logger.warning("camera %s: stream lost; reconnecting", self.name)
            self._set_state(StreamState.RECONNECTING if self.frames_read else StreamState.CONNECTING)
            self._stop.wait(self._backoff_s(attempt))
            attempt += 1
            self.cpu_s = self._cpu_before_s + time.thread_time() - self._cpu_start

    def _read_until_failure(self, cap: Capture) -> bool:
        """Read until the camera fails or stalls; True when at least one frame arrived.

        A read that blocks for (almost) the whole read timeout is a stall even when it then
        returns a frame: FFmpeg hands out buffered packets one per timeout after a server stops.
        """
        got_frame = False
        stall_s = 0.9 * self._settings.read_timeout_ms / 1000.0
        while not self._stop.is_set():
            started = time.monotonic()
            ok, image = cap.read()
            now = time.monotonic()
            if not ok or image is None:
                return got_frame
            if got_frame and now - started >= stall_s:
                logger.warning("camera %s: read blocked %.1f s (stalled)", self.name, now - started)
                return got_frame
            with self._lock:
                self._seq += 1
                self._latest = Frame(self._seq, image, time.time_ns(), now)
                self._arrivals.append(now)
            del image  # the frame holds the pixels; this thread keeps none while it waits for the next read
            self.last_frame_mono = now
            self.cpu_s = self._cpu_before_s + time.thread_time() - self._cpu_start
            got_frame = True
            self._set_state(StreamState.LIVE)
            self._on_frame()
        return got_frame
