"""The top-down cascade's two batched stages with a fake detector and a fake pose model."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from prometheus_client import generate_latest

from models.registry import backend as catalogue_backend
from service.backends import TopDownBackend
from service.config import BackendSettings, TopDownSettings
from service.errors import QueueFullError
from service.metrics import Metrics
from tests.support import PixelCountDetector, metric_samples

pytestmark = pytest.mark.unit

POSE_MAX_BATCH = 8


def grid(n: int) -> np.ndarray:
    """Boxes side by side, 10 px apart."""
    return np.array([[10 * i, 10, 10 * i + 8, 30] for i in range(n)], np.float32).reshape(-1, 4)


class FakePose:
    """Every keypoint at the crop centre, score 1: after mapping back it lands at the box centre."""

    name = "fake-pose"
    crop_wh = (16, 16)

    def preprocess_crop(self, crop_rgb: np.ndarray) -> np.ndarray:
        return crop_rgb.astype(np.float32).mean(axis=(0, 1))

    def postprocess_crop(self, outputs: list[np.ndarray]) -> np.ndarray:
        kps = np.zeros((17, 3), np.float32)
        kps[:, :2] = 7.5
        kps[:, 2] = 1.0
        return kps


class FakeSession:
    providers = ("CPUExecutionProvider",)
    output_names = ("rows",)

    def __init__(self, seconds_per_batch: float) -> None:
        self.seconds = seconds_per_batch
        self.batches: list[int] = []

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        time.sleep(self.seconds)
        self.batches.append(len(batch))
        return [batch]


def frame(people: int) -> np.ndarray:
    image = np.full((64, 512, 3), 128, np.uint8)
    image[0, 0, 0] = people
    return image


def make_backend(metrics: Metrics) -> tuple[TopDownBackend, FakeSession]:
    pose_session = FakeSession(0.01)
    backend = TopDownBackend(
        catalogue_backend("topdown-movenet"),
        detector=PixelCountDetector(grid),
        pose=FakePose(),
        det_sessions=[FakeSession(0.005)],
        pose_sessions=[pose_session],
        settings=BackendSettings(max_batch=POSE_MAX_BATCH, max_wait_ms=2, max_queue=64),
        topdown=TopDownSettings(),
        metrics=metrics,
    )
    pose_session.batches.clear()  # forget the warm-up run made at construction
    return backend, pose_session


def test_zero_one_and_forty_people() -> None:
    metrics = Metrics()
    backend, pose_session = make_backend(metrics)

    async def scenario() -> dict[int, tuple[int, float, np.ndarray]]:
        async def one(people: int) -> tuple[int, float, np.ndarray]:
            prepared = backend.prepare(frame(people))
            result = await backend.infer(prepared, deadline=time.monotonic() + 10, wait_s=10)
            return people, time.monotonic(), result.value.keypoints

        big = asyncio.create_task(one(40))
        await asyncio.sleep(0.02)  # the 40-person frame's crops are queued first
        small = await asyncio.gather(one(0), one(1))
        return {p: (p, t, k) for p, t, k in [*small, await big]}

    try:
        done = asyncio.run(scenario())
    finally:
        backend.stop()
    assert done[0][2].shape == (0, 17, 3)
    assert done[1][2].shape == (1, 17, 3)
    assert done[40][2].shape == (40, 17, 3)
    # each person's keypoints land at the centre of its own box
    centres = np.sort(done[40][2][:, 0, 0])
    assert np.allclose(centres, [10 * i + 4 for i in range(40)], atol=0.6)
    # the 40 crops were spread over several pose batches, none above max_batch
    assert max(pose_session.batches) <= POSE_MAX_BATCH
    assert sum(pose_session.batches) == 41 and len(pose_session.batches) >= 40 // POSE_MAX_BATCH
    # the 1-person frame, queued behind 40 crops, was not starved: it finished first
    assert done[1][1] < done[40][1]
    exported = generate_latest(metrics.registry).decode()
    stages = {lb["stage"] for lb, _ in metric_samples(exported, "poseserve_batch_size_count")}
    assert stages == {"detect", "pose"}


def test_full_pose_queue_fails_the_frame_and_frees_its_slots() -> None:
    metrics = Metrics()
    tight = TopDownSettings(pose_max_queue=16)
    backend = TopDownBackend(
        catalogue_backend("topdown-movenet"),
        detector=PixelCountDetector(grid),
        pose=FakePose(),
        det_sessions=[FakeSession(0.0)],
        pose_sessions=[FakeSession(0.05)],
        settings=BackendSettings(max_batch=4, max_wait_ms=1, max_queue=8),
        topdown=tight,
        metrics=metrics,
    )

    async def scenario() -> tuple[bool, int]:
        try:
            await backend.infer(backend.prepare(frame(40)), deadline=time.monotonic() + 5, wait_s=5)
        except QueueFullError:
            refused = True
        else:
            refused = False
        await asyncio.sleep(0.3)
        ok = await backend.infer(backend.prepare(frame(3)), deadline=time.monotonic() + 5, wait_s=5)
        return refused, len(ok.value)

    try:
        refused, people = asyncio.run(scenario())
    finally:
        backend.stop()
    assert refused and people == 3
