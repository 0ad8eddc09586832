"""The stream scheduler's bookkeeping: every frame a reader produces gets exactly one outcome.

`StreamManager` runs with a fake reader (frames pushed by the test) and a fake backend (scripted
answers); no camera, no model. Each test pushes frames, waits until every one has an outcome,
then checks the counts, the metric and that nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from service.config import StreamSettings
from service.errors import DeadlineExceededError, QueueFullError, WeightsMissingError
from service.metrics import Metrics
from service.streams.gate import FrameGate
from service.streams.manager import StreamManager
from service.streams.reader import Frame
from service.streams.states import FrameOutcome, StreamState
from service.streams.stream import ClientQueue, Stream

pytestmark = pytest.mark.unit

GOOD_IMAGE = np.zeros((8, 8, 3), np.uint8)
UNCONVERTIBLE_IMAGE = np.zeros((8, 8, 2), np.uint8)  # two channels: cv2.cvtColor(BGR2RGB) raises cv2.error


class FakeReader:
    """A camera whose frames the test pushes; the manager sees only `latest()` and the callbacks."""

    def __init__(self, url: str, settings: StreamSettings, *, name: str, on_state: Any, on_frame: Any) -> None:
        self.name = name
        self._on_frame: Callable[[], None] = on_frame
        self._latest: Frame | None = None
        self.frames_read = 0
        self.state = StreamState.LIVE
        self.alive = True
        self.reconnects = 0
        self.cpu_s = 0.0
        self.started_mono: float | None = None
        self.last_frame_mono: float | None = None

    def start(self) -> None:
        self.started_mono = time.monotonic()

    def stop(self) -> None:
        self.alive, self.state = False, StreamState.STOPPED

    def input_fps(self) -> float:
        return 0.0

    def latest(self, after_seq: int = 0) -> Frame | None:
        frame = self._latest
        return frame if frame is not None and frame.seq > after_seq else None

    def push(self, image: np.ndarray = GOOD_IMAGE, age_s: float = 0.0) -> None:
        """A new frame captured `age_s` ago; wakes the scheduler like a real reader does."""
        self.frames_read += 1
        now = time.monotonic()
        self._latest = Frame(self.frames_read, image, time.time_ns(), now - age_s)
        self.last_frame_mono = now
        self._on_frame()


class NoPersons:
    keypoints = np.zeros((0, 17, 3), np.float32)
    boxes_xyxy = np.zeros((0, 4), np.float32)
    scores = np.zeros((0,), np.float32)

    def above(self, min_score: float) -> NoPersons:
        return self


@dataclass
class FakeBackend:
    """`infer` follows `script`, one step per call: None = answer, an exception = raise it,
    an `asyncio.Event` = answer once it is set (the slot stays busy meanwhile); past the script,
    every call takes `infer_s`."""

    script: deque[BaseException | asyncio.Event | None] = field(default_factory=deque)
    infer_s: float = 0.0
    untrained: bool = False
    calls: int = 0
    running: int = 0
    most_running: int = 0
    """the most `infer` calls at once"""
    queues_prepared = False  # the scheduler awaits `infer`, which this script drives
    images_at_once = 1

    def prepare(self, image_rgb: np.ndarray) -> np.ndarray:
        return image_rgb

    def admit(self) -> SimpleNamespace:
        return SimpleNamespace(release=lambda: None)

    async def infer(
        self, prepared: np.ndarray, *, deadline: float, wait_s: float, key: Any = None, ticket: Any = None
    ) -> Any:
        self.calls += 1
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            step = self.script.popleft() if self.script else None
            if step is None and self.infer_s:
                await asyncio.sleep(self.infer_s)
            if isinstance(step, asyncio.Event):
                await step.wait()
            elif step is not None:
                raise step
            return SimpleNamespace(value=NoPersons(), queue_s=0.001, inference_s=0.002)
        finally:
            self.running -= 1


@dataclass
class FakeBackends:
    backend: FakeBackend

    def spec(self, name: str) -> None:
        return None

    async def acquire(self, name: str) -> FakeBackend:
        return self.backend


@dataclass
class Harness:
    manager: StreamManager
    metrics: Metrics
    backend: FakeBackend
    stream: Stream
    reader: FakeReader
    streams: list[Stream]
    readers: list[FakeReader]

    counted: dict[str, float] = field(default_factory=dict)
    """`stream_frames_total` of the stream by outcome, read before the harness closed (and forgot it)"""

    def outcomes(self) -> dict[str, int]:
        return {str(k): v for k, v in self.stream.outcomes.items()}

    def read_metric(self) -> None:
        for outcome in FrameOutcome:
            value = self.metrics.registry.get_sample_value(
                "poseserve_stream_frames_total", {"stream": self.stream.name, "outcome": outcome}
            )
            if value:  # every outcome's series exists from 0
                self.counted[outcome] = value

    async def push_all(self, frames: int, every_s: float = 0.01) -> None:
        """`frames` frames on every camera, one round every `every_s`."""
        for _ in range(frames):
            for reader in self.readers:
                reader.push()
            await asyncio.sleep(every_s)

    async def settle(self, frames: int, timeout_s: float = 5.0) -> None:
        """Wait until `frames` outcomes are counted, then a little longer (a double count would show)."""
        deadline = time.monotonic() + timeout_s
        while sum(self.stream.outcomes.values()) < frames:
            assert time.monotonic() < deadline, f"only {self.outcomes()} after {timeout_s} s"
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)


@asynccontextmanager
async def harness(max_fps: float = 100.0, frame_max_age_ms: float = 500.0, cameras: int = 1) -> AsyncIterator[Harness]:
    """The manager with `cameras` streams on one fake backend (`Harness.stream`: the first)."""
    readers: list[FakeReader] = []

    def reader_factory(*args: Any, **kwargs: Any) -> FakeReader:
        readers.append(FakeReader(*args, **kwargs))
        return readers[-1]

    settings = StreamSettings(frame_max_age_ms=frame_max_age_ms, read_timeout_ms=60_000)
    metrics = Metrics()
    backend = FakeBackend()
    with ThreadPoolExecutor(1) as pool:
        manager = StreamManager(
            settings,
            FakeBackends(backend),  # type: ignore[arg-type]
            metrics,
            pool,
            default_backend="fake",
            inference_timeout_s=1.0,
            min_person_score=0.2,
            reader_factory=reader_factory,
        )
        manager.start()
        streams = [
            await manager.create(f"rtsp://127.0.0.1/cam{i}", name=f"cam{i}", backend=None, max_fps=max_fps)
            for i in range(cameras)
        ]
        h = Harness(manager, metrics, backend, streams[0], readers[0], streams, readers)
        try:
            yield h
        finally:
            h.read_metric()
            await manager.close()


def test_frames_superseded_while_waiting_out_max_fps_are_skipped() -> None:
    async def scenario() -> tuple[Harness, list[dict[str, Any]]]:
        async with harness(max_fps=2.0) as h:  # one submission per 0.5 s
            client = h.manager.subscribe(h.stream.id)
            h.reader.push()
            await h.settle(1)
            for _ in range(3):  # inside the 0.5 s after frame 1: only the newest may go
                h.reader.push()
                await asyncio.sleep(0.01)
            await h.settle(4)
            return h, await drain(client)

    h, messages = asyncio.run(scenario())
    assert h.outcomes() == {"processed": 2, "skipped": 2}
    assert h.backend.calls == 2
    assert [m["seq"] for m in messages if "seq" in m] == [1, 4]
    assert h.counted == {"processed": 2.0, "skipped": 2.0}


def test_frames_superseded_while_the_slot_is_busy_are_dropped_overload() -> None:
    async def scenario() -> Harness:
        async with harness() as h:
            gate = asyncio.Event()
            h.backend.script.append(gate)  # frame 1 stays in flight until the gate opens
            h.reader.push()
            await asyncio.sleep(0.05)
            for _ in range(3):
                h.reader.push()
                await asyncio.sleep(0.01)
            assert h.outcomes() == {}, "nothing may be decided while frame 1 is in flight"
            gate.set()
            await h.settle(4)
            return h

    h = asyncio.run(scenario())
    assert h.outcomes() == {"processed": 2, "dropped_overload": 2}
    assert h.backend.calls == 2


def test_cameras_past_what_the_backend_runs_take_turns_instead_of_queueing() -> None:
    """Four cameras at 100 fps on a backend that runs one image at a time (50 ms): at most that
    one and the next frame are in it at once, the streams served in turn; every frame one outcome."""

    async def scenario() -> Harness:
        async with harness(cameras=4) as h:
            h.backend.infer_s = 0.05
            await h.push_all(60)
            deadline = time.monotonic() + 5.0
            while any(sum(s.outcomes.values()) < r.frames_read for s, r in zip(h.streams, h.readers, strict=True)):
                assert time.monotonic() < deadline, [s.outcomes for s in h.streams]
                await asyncio.sleep(0.01)
            return h

    h = asyncio.run(scenario())
    assert h.backend.most_running == 2  # without the gate: one per camera, 4
    processed = [s.outcomes.get(FrameOutcome.PROCESSED, 0) for s in h.streams]
    assert min(processed) >= 2 and max(processed) - min(processed) <= 2, processed
    for stream in h.streams:
        assert sum(stream.outcomes.values()) == 60
        assert stream.outcomes.get(FrameOutcome.DROPPED_OVERLOAD, 0) > 0  # frames lost waiting for the turn


def test_streams_removed_while_waiting_their_turn_or_in_flight_leave_no_place_held() -> None:
    """Cameras removed while their frame runs or while they wait at the gate give their places
    back: the one left runs on, and once it is idle nothing is held."""

    async def scenario() -> FrameGate:
        async with harness(cameras=4) as h:
            h.backend.infer_s = 0.05
            await h.push_all(10)
            gate = h.manager._gates["fake"]
            assert gate.held == 2 and gate.waiting >= 1  # two frames in (one running, the next), others wait
            for stream in h.streams[1:]:
                await h.manager.delete(stream.id)
            before = h.stream.outcomes.get(FrameOutcome.PROCESSED, 0)
            for _ in range(10):
                h.reader.push()
                await asyncio.sleep(0.06)
            await h.settle(h.reader.frames_read)
            assert h.stream.outcomes.get(FrameOutcome.PROCESSED, 0) > before
            assert (gate.held, gate.waiting) == (0, 0)  # the last frame done
            return gate

    gate = asyncio.run(scenario())
    assert (gate.held, gate.waiting) == (0, 0)  # and the manager closed


async def camera(h: Harness, fps: float, seconds: float) -> float:
    """Push frames at `fps` for about `seconds`; the seconds it took, once every frame has its outcome."""
    started = time.monotonic()
    for _ in range(round(fps * seconds)):
        h.reader.push()
        await asyncio.sleep(1.0 / fps)
    pushed_s = time.monotonic() - started
    await h.settle(h.reader.frames_read)
    return pushed_s


def test_a_camera_faster_than_max_fps_on_an_idle_server_drops_nothing() -> None:
    async def scenario() -> Harness:
        async with harness(max_fps=10.0) as h:
            h.backend.infer_s = 0.06  # busy at most 60 % of each 100 ms period
            await camera(h, fps=50.0, seconds=2.0)
            return h

    h = asyncio.run(scenario())
    outcomes = h.outcomes()
    assert "dropped_overload" not in outcomes, outcomes
    assert 15 <= outcomes["processed"] <= 22, outcomes  # ~10/s for 2 s
    assert outcomes["processed"] + outcomes["skipped"] == h.reader.frames_read


def test_a_saturated_stream_counts_the_max_fps_slots_it_lost_as_overload() -> None:
    async def scenario() -> tuple[Harness, float]:
        async with harness(max_fps=10.0) as h:
            h.backend.infer_s = 0.25  # 4 results/s where max_fps asks for 10
            return h, await camera(h, fps=50.0, seconds=2.0)

    h, seconds = asyncio.run(scenario())
    outcomes = h.outcomes()
    processed, overload = outcomes["processed"], outcomes.get("dropped_overload", 0)
    assert abs(processed - 4 * seconds) <= 2, (outcomes, seconds)
    # processed + dropped_overload = what max_fps would have taken; the rest is skipped
    assert abs(processed + overload - 10 * seconds) <= 3, (outcomes, seconds)
    assert processed + overload + outcomes["skipped"] == h.reader.frames_read


@pytest.mark.parametrize("infer_s", [0.12, 0.17])
def test_a_stream_slightly_slower_than_max_fps_counts_each_lost_slot_once(infer_s: float) -> None:
    """Between one and two periods per frame the max_fps grid moves on by one period a frame while
    the slot frees later each time: the lost time is counted once, not again behind each frame."""

    async def scenario() -> tuple[Harness, float]:
        async with harness(max_fps=10.0) as h:
            h.backend.infer_s = infer_s
            return h, await camera(h, fps=50.0, seconds=2.5)

    h, seconds = asyncio.run(scenario())
    outcomes = h.outcomes()
    processed, overload = outcomes["processed"], outcomes.get("dropped_overload", 0)
    assert abs(processed - seconds / infer_s) <= 3, (outcomes, seconds)
    assert abs(processed + overload - 10 * seconds) <= 3, (outcomes, seconds)
    assert processed + overload + outcomes["skipped"] == h.reader.frames_read


def test_expected_failures_map_to_their_outcomes() -> None:
    async def scenario() -> Harness:
        async with harness() as h:
            h.backend.script.extend([QueueFullError("full"), DeadlineExceededError("late"), TimeoutError()])
            for _ in range(3):  # queue full, deadline passed in the queue, wait timed out
                h.reader.push()
                await h.settle(h.reader.frames_read)
            h.reader.push(age_s=10.0)  # older than frame_max_age_ms: never submitted
            await h.settle(4)
            h.reader.push(image=UNCONVERTIBLE_IMAGE)
            await h.settle(5)
            h.reader.push()
            await h.settle(6)
            return h

    h = asyncio.run(scenario())
    assert h.outcomes() == {"dropped_overload": 1, "dropped_stale": 3, "decode_error": 1, "processed": 1}
    assert h.backend.calls == 4  # neither the stale frame nor the unconvertible one reached the backend
    info = h.stream.snapshot()
    assert sum(info.frames.values()) == h.reader.frames_read == 6


def test_unexpected_failures_are_errors_logged_once_and_the_stream_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> Harness:
        async with harness() as h:
            h.backend.script.extend([RuntimeError("boom"), RuntimeError("boom"), WeightsMissingError("no weights")])
            for _ in range(4):
                h.reader.push()
                await h.settle(h.reader.frames_read)
            return h

    with caplog.at_level(logging.WARNING, logger="service.streams"):
        h = asyncio.run(scenario())
    # a ServeError that is not an overload is an `error`, never `dropped_overload`
    assert h.outcomes() == {"error": 3, "processed": 1}
    assert h.stream.task is not None and h.stream.task.cancelled()  # ran until close(), never died
    frame_failures = [r for r in caplog.records if "frame" in r.getMessage() and "failed" in r.getMessage()]
    assert len(frame_failures) == 1, "per-frame failures must be rate-limited"
    assert frame_failures[0].levelno == logging.ERROR and frame_failures[0].exc_info is not None
    assert h.stream.error_log.total == 3 and h.stream.error_log.suppressed == 2


def test_a_mixed_run_gives_every_frame_exactly_one_outcome() -> None:
    async def scenario() -> Harness:
        async with harness(max_fps=50.0) as h:
            gate = asyncio.Event()
            h.backend.script.extend([None, QueueFullError("full"), gate, RuntimeError("boom")])
            h.reader.push()
            await h.settle(1)  # processed
            h.reader.push()
            await h.settle(2)  # queue full
            h.reader.push()  # in flight until the gate opens; the next three are superseded
            await asyncio.sleep(0.05)
            for _ in range(3):
                h.reader.push()
                await asyncio.sleep(0.005)
            gate.set()
            await h.settle(6)  # the gated frame processed, two superseded meanwhile (within one max_fps
            # period after the first arrived: no allowed slot was lost, so skipped), the newest fails
            h.reader.push(age_s=5.0)
            await h.settle(7)
            h.reader.push(image=UNCONVERTIBLE_IMAGE)
            await h.settle(8)
            return h

    h = asyncio.run(scenario())
    expected = {"processed": 2, "dropped_overload": 1, "skipped": 2, "error": 1, "dropped_stale": 1, "decode_error": 1}
    assert h.outcomes() == expected
    assert sum(h.outcomes().values()) == h.reader.frames_read == 8
    assert h.counted == expected


async def drain(client: ClientQueue) -> list[dict[str, Any]]:
    """The messages waiting in a client's queue."""
    messages = []
    while True:
        try:
            text = await asyncio.wait_for(client.get(), timeout=0.05)
        except TimeoutError:
            return messages
        assert text is not None
        messages.append(json.loads(text))
