"""Tracking, smoothing, jitter and skeleton-only through `StreamManager`, with a fake reader and a
backend that answers scripted persons (no camera, no model)."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import weakref
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from models.persons import Persons
from service.config import StreamSettings
from service.metrics import Metrics
from service.schemas import SmoothingOptions, TrackingOptions
from service.streams.manager import StreamManager
from service.streams.stream import ClientQueue, Stream
from tests.unit.test_stream_scheduler import FakeReader
from tests.unit.test_tracker import person

pytestmark = pytest.mark.unit


@dataclass
class PersonsBackend:
    """Answers each frame with the next scripted `Persons` (the last one once the script ends)."""

    script: list[Persons]
    untrained: bool = False
    calls: int = 0
    queues_prepared = False  # the scheduler awaits `infer`, which answers from the script
    images_at_once = 1
    seen: list[weakref.ref[np.ndarray]] = field(default_factory=list)

    def prepare(self, image_rgb: np.ndarray) -> np.ndarray:
        self.seen.append(weakref.ref(image_rgb))
        return image_rgb

    def admit(self) -> SimpleNamespace:
        return SimpleNamespace(release=lambda: None)

    async def infer(self, prepared: np.ndarray, **_: Any) -> Any:
        self.calls += 1
        persons = self.script[min(self.calls, len(self.script)) - 1]
        return SimpleNamespace(value=persons, queue_s=0.001, inference_s=0.002)


@dataclass
class Backends:
    backend: PersonsBackend

    def spec(self, name: str) -> None:
        return None

    async def acquire(self, name: str) -> PersonsBackend:
        return self.backend


def persons_at(*xs: float, noise: np.ndarray | None = None) -> Persons:
    people = [person(x) for x in xs]
    keypoints = np.stack([p[0] for p in people]).astype(np.float32)
    if noise is not None:
        keypoints[..., :2] += noise
    return Persons(keypoints, np.stack([p[1] for p in people]).astype(np.float32), np.full(len(xs), 0.9, np.float32))


@dataclass
class Run:
    manager: StreamManager
    metrics: Metrics
    stream: Stream
    reader: FakeReader
    client: ClientQueue

    async def push_and_settle(self, image: np.ndarray | None = None, timeout_s: float = 5.0) -> None:
        before = sum(self.stream.outcomes.values())
        self.reader.push(np.zeros((8, 8, 3), np.uint8) if image is None else image)
        deadline = time.monotonic() + timeout_s
        while sum(self.stream.outcomes.values()) <= before:
            assert time.monotonic() < deadline, "the frame got no outcome in time"
            await asyncio.sleep(0.002)


@asynccontextmanager
async def running(
    script: list[Persons], settings: StreamSettings | None = None, **options: Any
) -> AsyncIterator[tuple[Run, PersonsBackend]]:
    readers: list[FakeReader] = []

    def reader_factory(*args: Any, **kwargs: Any) -> FakeReader:
        readers.append(FakeReader(*args, **kwargs))
        return readers[-1]

    metrics = Metrics()
    backend = PersonsBackend(script)
    with ThreadPoolExecutor(1) as pool:
        manager = StreamManager(
            settings or StreamSettings(read_timeout_ms=60_000),
            Backends(backend),  # type: ignore[arg-type]
            metrics,
            pool,
            default_backend="fake",
            inference_timeout_s=1.0,
            min_person_score=0.2,
            reader_factory=reader_factory,
        )
        manager.start()
        try:
            stream = await manager.create("rtsp://127.0.0.1/cam", name="cam", backend=None, max_fps=100.0, **options)
            yield Run(manager, metrics, stream, readers[0], manager.subscribe(stream.id)), backend
        finally:
            await manager.close()


async def received(client: ClientQueue) -> list[dict[str, Any]]:
    out = []
    while not client._queue.empty():
        text = await client.get()
        if text is not None:
            out.append(json.loads(text))
    return out


def test_track_ids_and_events_on_the_socket() -> None:
    script = [persons_at(10.0 * i, 400.0) for i in range(5)] + [persons_at(400.0)] * 40

    async def scenario() -> list[dict[str, Any]]:
        async with running(script, tracking=TrackingOptions(min_hits=2, max_age_frames=3)) as (run, _):
            messages: list[dict[str, Any]] = []
            for _ in range(10):
                await run.push_and_settle()
                messages += await received(run.client)
            return messages

    messages = [m for m in asyncio.run(scenario()) if m.get("event") != "state"]
    frames = [m for m in messages if "seq" in m and "persons" in m]
    assert [[p["track_id"] for p in f["persons"]] for f in frames[:3]] == [[None, None], [1, 2], [1, 2]]
    events = [m for m in messages if m.get("event") == "track"]
    assert [(e["change"], e["track_id"]) for e in events] == [("born", 1), ("born", 2), ("lost", 1)]
    born_at = messages.index(events[0])
    assert messages[born_at + 2]["seq"] == events[0]["frame_seq"] == 2  # events come before their frame's message
    assert events[2]["frame_seq"] == 9  # track 1 last seen in frame 5, missed in 6, 7, 8 (max_age 3): lost in 9


def test_tracking_off_sends_no_ids_and_no_events() -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with running([persons_at(0.0)], tracking=TrackingOptions(enabled=False, min_hits=1)) as (run, _):
            for _ in range(3):
                await run.push_and_settle()
            return await received(run.client)

    messages = asyncio.run(scenario())
    assert not [m for m in messages if m.get("event") == "track"]
    assert [p["track_id"] for m in messages if "persons" in m for p in m["persons"]] == [None] * 3


def test_smoothing_steadies_a_standing_person_and_the_jitter_metric_shows_it() -> None:
    rng = np.random.default_rng(3)
    script = [persons_at(100.0, noise=rng.normal(0, 2.0, (1, 17, 2)).astype(np.float32)) for _ in range(25)]
    jitter = {}
    for enabled in (False, True):

        async def scenario(enabled: bool = enabled) -> tuple[float, float]:
            smoothing = SmoothingOptions(enabled=enabled, min_cutoff=0.5, beta=0.0)
            async with running(script, tracking=TrackingOptions(min_hits=1), smoothing=smoothing) as (run, _):
                for _ in range(len(script)):
                    await run.push_and_settle()
                    await asyncio.sleep(0.01)  # frames 10 ms apart: capture times drive the filter
                labels = {"stream": "cam"}
                total = run.metrics.registry.get_sample_value("poseserve_stream_keypoint_jitter_pixels_sum", labels)
                count = run.metrics.registry.get_sample_value("poseserve_stream_keypoint_jitter_pixels_count", labels)
                assert total is not None and count == len(script) - 1
            forgotten = run.metrics.registry.get_sample_value("poseserve_stream_keypoint_jitter_pixels_count", labels)
            return total / count, -1.0 if forgotten is None else forgotten

        jitter[enabled], forgotten = asyncio.run(scenario())
        assert forgotten == -1.0  # deleting the stream removed its series
    assert jitter[True] < 0.5 * jitter[False]


def test_skeleton_only_keeps_no_pixels_after_inference() -> None:
    """Weak references prove it: once a frame's outcome is counted, nothing holds its pixels (the
    reader's newest-frame slot included), nor the model input made from them."""

    async def scenario(skeleton_only: bool, settings: StreamSettings | None = None) -> tuple[bool, list[bool]]:
        options = {"skeleton_only": skeleton_only}
        async with running([persons_at(0.0)], settings, **options) as (run, backend):
            refs = []
            for _ in range(3):
                image = np.full((8, 8, 3), 7, np.uint8)
                refs.append(weakref.ref(image))
                await run.push_and_settle(image)
                del image
            gc.collect()
            alive = [r() is not None for r in refs] + [r() is not None for r in backend.seen]
            return run.stream.skeleton_only, alive

    flag, alive = asyncio.run(scenario(True))
    assert flag and not any(alive)
    flag, alive = asyncio.run(scenario(False))
    assert not flag and alive[2]  # the contrast: the reader's slot still holds the newest frame
    forced = StreamSettings(read_timeout_ms=60_000, skeleton_only=True)
    flag, alive = asyncio.run(scenario(False, forced))  # the server-wide switch wins
    assert flag and not any(alive)
