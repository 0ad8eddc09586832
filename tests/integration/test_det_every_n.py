"""`det_every_n` on a real camera: a file:// clip through the app (real reader, batchers, workers, the
real NanoDet -> MoveNet Thunder cascade) with the detector on every third frame only.

The detector's stage runs on about a third of the processed frames (its batch-size histogram counts
every image it ran), the frames in between are cropped from the previous keypoints, and the two
people of the clip are still found on the frames without a detector run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from models import registry
from models.pipelines import build, topdown
from models.pipelines.base import PipelineOptions
from models.runtime import OrtModel
from models.weights import WeightsStore
from service.api import create_app
from service.api.deps import Services
from service.backends.topdown import DetectionCadence
from service.config import Settings, StreamSettings, TopDownSettings
from service.schemas import StreamCreate
from service.streams.states import FrameOutcome

pytestmark = pytest.mark.integration

logger = logging.getLogger(__name__)

BACKEND = "topdown-movenet"
FRAMES = 30
MIN_SCORE = 0.2


def test_detector_runs_on_every_third_frame_and_persons_are_still_found(
    shared_root: Path, topdown_models: Path
) -> None:
    clip = shared_root / "data" / "videos" / "mmaction2_two_people_room.mp4"
    body = StreamCreate.model_validate({"url": f"file://{clip}", "backend": BACKEND, "det_every_n": 3})
    settings = Settings(
        model_dir=topdown_models,
        streams=StreamSettings(allow_file=True, frame_max_age_ms=5000),
        topdown=TopDownSettings(det_every_n=1),  # the subscription's own det_every_n wins
    )

    async def scenario() -> tuple[list[dict[str, Any]], int, float, DetectionCadence | None]:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            svc: Services = app.state.services
            stream = await svc.streams.create(
                body.url, name="room", backend=body.backend, max_fps=10.0, det_every_n=body.det_every_n
            )
            client = svc.streams.subscribe(stream.id)
            frames: list[dict[str, Any]] = []
            deadline = time.monotonic() + 120.0
            while len(frames) < FRAMES:
                text = await asyncio.wait_for(client.get(), max(deadline - time.monotonic(), 0.01))
                assert text is not None
                if "persons" in (message := json.loads(text)):
                    frames.append(message)
            await svc.streams.delete(stream.id)
            processed = stream.outcomes.get(FrameOutcome.PROCESSED, 0)
            detected = svc.metrics.registry.get_sample_value(
                "poseserve_batch_size_sum", {"backend": BACKEND, "stage": "detect"}
            )
            return frames, processed, detected or 0.0, stream.cadence

    frames, processed, detector_images, cadence = asyncio.run(scenario())
    assert cadence is not None and cadence.every_n == 3
    logger.info("processed %d, detector images %d, %s", processed, detector_images, cadence)
    assert processed >= FRAMES
    # a third of the frames, and a few more where both people were lost or a frame was dropped in flight
    assert processed / 3 - 1 <= detector_images <= processed / 2, (detector_images, processed)
    assert cadence.carried_frames >= 0.5 * processed, cadence
    # person scores on this clip sit near the default min_person_score (0.2-0.33, detector score x
    # mean keypoint score), so one of the two people drops below it on some frames, as it does when
    # the detector runs on every frame
    counts = [len(m["persons"]) for m in frames]
    assert sum(c >= 1 for c in counts) >= 0.9 * len(counts), counts
    assert sum(c >= 2 for c in counts) >= 0.5 * len(counts), counts
    # tracking (on by default) works across carried and detected frames alike: ids once confirmed
    later = frames[5:]
    assert sum(any(p["track_id"] is not None for p in m["persons"]) for m in later) >= 0.8 * len(later)


def test_carried_crops_find_the_keypoints_the_detector_crops_find(shared_root: Path, topdown_models: Path) -> None:
    """Frame by frame on the clip: every person the detector path finds on a frame the cadence
    crops from keypoints is found there too, at nearly the same keypoints."""
    clip = shared_root / "data" / "videos" / "mmaction2_two_people_room.mp4"
    store = WeightsStore(topdown_models)
    detector = build.detector(registry.DETECTORS["nanodet"], None, PipelineOptions())
    pose = build.crop_pose(registry.MODELS["movenet-thunder"], None)
    det_session = OrtModel(store.require("nanodet").path, providers=("cpu",), intra_op_threads=2)
    pose_session = OrtModel(store.require("movenet-thunder").path, providers=("cpu",), intra_op_threads=2)
    capture = cv2.VideoCapture(str(clip))
    cadence = DetectionCadence(every_n=3, min_score=MIN_SCORE)
    errors: list[float] = []
    try:
        for _ in range(24):
            ok, bgr = capture.read()
            assert ok
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            reference = topdown.run_topdown(detector, det_session, pose, pose_session, rgb)
            if cadence.due():
                cadence.record(reference, detected=True)
                continue
            rows, crops = topdown.make_crops(rgb, cadence.boxes, pose)
            outputs = pose_session.run(np.stack(rows))
            kps = [pose.postprocess_crop([o[i] for o in outputs]) for i in range(len(rows))]
            carried = topdown.assemble(kps, crops, cadence.det_scores, flip_test=False, crop_w=pose.crop_wh[0])
            cadence.record(carried, detected=False)
            strong = reference.above(MIN_SCORE)
            for person, box in zip(strong.keypoints, strong.boxes_xyxy, strict=True):
                assert len(carried.scores), "a person the detector path finds is missing"
                distance = np.linalg.norm(carried.keypoints[:, :, :2] - person[:, :2], axis=-1).mean(axis=1)
                errors.append(float(distance.min()) / float(box[3] - box[1]))
    finally:
        capture.release()
    logger.info(
        "carried keypoints vs detector-path keypoints: median %.4f, max %.4f of the box height",
        np.median(errors),
        max(errors),
    )
    assert len(errors) >= 20
    assert np.median(errors) < 0.03 and max(errors) < 0.25, errors
