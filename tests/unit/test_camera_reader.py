"""CameraReader state machine with an injected capture (no network, no FFmpeg)."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

from service.config import StreamSettings
from service.streams.reader import CameraReader
from service.streams.states import StreamState

pytestmark = pytest.mark.unit

FAST = StreamSettings(backoff_initial_s=0.01, backoff_max_s=0.05, read_timeout_ms=500)


class FakeCapture:
    """Yields `frames` frames (pixel value = index), then fails (stream lost)."""

    def __init__(self, frames: int, period_s: float = 0.001) -> None:
        self.left, self.period_s, self.index = frames, period_s, 0
        self.released = False

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.left == 0:
            return False, None
        time.sleep(self.period_s)
        self.left -= 1
        self.index += 1
        return True, np.full((4, 4, 3), self.index % 255, np.uint8)

    def release(self) -> None:
        self.released = True


def wait_until(predicate, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_never_connecting_camera_backs_off_and_stops_cleanly() -> None:
    attempts: list[float] = []

    def refuse(url: str, settings: StreamSettings) -> None:
        attempts.append(time.monotonic())
        return None

    reader = CameraReader("rtsp://x", FAST, name="dead", open_capture=refuse, rng=random.Random(0))
    reader.start()
    wait_until(lambda: len(attempts) >= 5)
    reader.stop()
    assert reader.state == StreamState.STOPPED and not reader.alive
    assert reader.frames_read == 0 and reader.latest() is None
    gaps = np.diff(attempts)
    # the delay grows from backoff_initial_s towards backoff_max_s (jitter +-20 %), never below it
    assert gaps[0] >= 0.8 * FAST.backoff_initial_s and gaps[-1] >= 0.8 * FAST.backoff_max_s


def test_lost_stream_reconnects_and_keeps_only_the_newest_frame() -> None:
    captures: list[FakeCapture] = []
    states: list[StreamState] = []
    lock = threading.Lock()

    def open_capture(url: str, settings: StreamSettings) -> FakeCapture:
        with lock:
            captures.append(FakeCapture(frames=20))
            return captures[-1]

    reader = CameraReader("rtsp://x", FAST, name="flaky", open_capture=open_capture, on_state=states.append)
    reader.start()
    wait_until(lambda: reader.reconnects >= 2)
    newest = reader.latest()
    reader.stop()
    assert states[:3] == [StreamState.LIVE, StreamState.RECONNECTING, StreamState.LIVE]
    assert all(c.released for c in captures[:-1])
    assert newest is not None and newest.seq >= 40
    assert reader.latest(after_seq=newest.seq + 10**6) is None


def test_stalled_read_counts_as_lost() -> None:
    class Stalling(FakeCapture):
        def read(self) -> tuple[bool, np.ndarray | None]:
            if self.index == 3:
                time.sleep(FAST.read_timeout_ms / 1000)  # blocks for the whole read timeout
            return super().read()

    reader = CameraReader("rtsp://x", FAST, name="stall", open_capture=lambda u, s: Stalling(frames=100))
    reader.start()
    wait_until(lambda: reader.reconnects >= 1)
    reader.stop()
    assert reader.frames_read >= 3


def test_a_failed_reader_restarts_in_a_new_thread_and_its_frame_numbers_continue() -> None:
    class Crashing(FakeCapture):
        def read(self) -> tuple[bool, np.ndarray | None]:
            if self.index == 5:
                raise RuntimeError("decoder bug")  # unexpected: ends the reader's thread
            return super().read()

    states: list[StreamState] = []
    open_capture = lambda u, s: Crashing(frames=100)  # noqa: E731
    reader = CameraReader("rtsp://x", FAST, name="crash", open_capture=open_capture, on_state=states.append)
    assert not reader.restart(), "never started: nothing to restart"
    reader.start()
    wait_until(lambda: reader.state == StreamState.FAILED and not reader.alive)
    first = reader.latest()
    assert first is not None and first.seq == 5 and reader.frames_read == 5
    assert reader.restart()
    assert not reader.restart(), "its thread runs: no second one"
    wait_until(lambda: reader.frames_read >= 10 and reader.state == StreamState.FAILED and not reader.alive)
    second = reader.latest()
    reader.stop()
    assert second is not None and second.seq == 10, "frame numbers continue after a restart"
    assert states == [StreamState.LIVE, StreamState.FAILED, StreamState.RECONNECTING, StreamState.LIVE,
                      StreamState.FAILED, StreamState.STOPPED]  # fmt: skip
    assert not reader.restart(), "a stopped reader stays stopped"
