"""Top-down backends: image -> detector (stage "detect", frames batched) -> affine crops -> pose
model (stage "pose", crops from many frames batched; each frame is its own fairness key, so a
frame with 40 people is spread over several batches without starving other frames).

Cameras may run the detector on every `det_every_n`-th frame only (`DetectionCadence`, one per
stream): on the frames in between, the persons of the previous result are cropped from boxes around
their keypoints and go straight to the pose stage (`prepare_cadenced`, `infer_cadenced`)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models import registry
from models.card import ModelCard
from models.persons import Persons
from models.pipelines import build
from models.pipelines.base import CropPose, Detector, PipelineOptions
from models.pipelines.topdown import assemble, boxes_from_keypoints, make_crops
from models.registry import ModelEntry
from models.runtime import Session
from models.transforms import CropBox
from models.weights import WeightsStore
from service.backends.base import LoadedBackend, Prepared, await_result
from service.backends.sessions import load_sessions, run_rows, warm_up
from service.config import BackendSettings, Settings, TopDownSettings
from service.engine import ItemResult, StageRunner, Ticket
from service.metrics import Metrics

__all__ = ["DetectionCadence", "Detections", "TopDownBackend", "crop_stage_settings"]


@dataclass(frozen=True)
class Detections:
    """One frame after the detect stage: pose rows to run, their crop geometry, box scores."""

    rows: list[np.ndarray]
    crops: list[CropBox]
    scores: np.ndarray


@dataclass
class DetectionCadence:
    """One camera's detector schedule on a top-down backend (`topdown.det_every_n`).

    The detector runs on a frame when `every_n - 1` frames have been cropped from keypoints since
    its last run, or when no person is carried. On the frames in between, each person of the
    previous result scoring at least `min_score` is cropped from the box around its keypoints
    (`boxes_from_keypoints`) and keeps the detector score it was found with. Used by one frame at
    a time (a stream has at most one frame in flight).
    """

    every_n: int
    min_score: float = 0.0
    since_detect: int = 0
    """frames cropped from keypoints since the detector last ran"""
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    det_scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    detected_frames: int = 0
    carried_frames: int = 0

    def due(self) -> bool:
        """Whether the next frame goes through the detector."""
        return self.every_n <= 1 or len(self.boxes) == 0 or self.since_detect >= self.every_n - 1

    def record(self, persons: Persons, *, detected: bool) -> None:
        """A frame's result: its persons become the next frame's boxes."""
        keep = persons.scores >= self.min_score
        boxes, kept = boxes_from_keypoints(persons.keypoints[keep])
        # person score = detector score x mean keypoint score (`assemble`): the detector's share
        mean_kpt = np.maximum(persons.keypoints[keep][kept, :, 2].mean(axis=1), 1e-6)
        self.boxes, self.det_scores = boxes, (persons.scores[keep][kept] / mean_kpt).astype(np.float32)
        if detected:
            self.since_detect, self.detected_frames = 0, self.detected_frames + 1
        else:
            self.since_detect, self.carried_frames = self.since_detect + 1, self.carried_frames + 1


class TopDownBackend(LoadedBackend):
    """Detector and pose model given as objects with their sessions (tests pass fakes); see `load`."""

    def __init__(
        self,
        entry: ModelEntry,
        *,
        detector: Detector,
        pose: CropPose,
        det_sessions: Sequence[Session],
        pose_sessions: Sequence[Session],
        settings: BackendSettings,
        topdown: TopDownSettings,
        metrics: Metrics,
        card: ModelCard | None = None,
    ) -> None:
        self.entry = entry
        self.flip_test, self.padding = topdown.flip_test, topdown.padding
        self.detector, self.pose = detector, pose
        pose_settings = crop_stage_settings(settings, topdown)
        self.providers = list(pose_sessions[0].providers)
        self.runtime = settings.runtime or "onnxruntime"
        self.card = card
        self.detect: StageRunner[Prepared, Detections, Session] = self._runner(
            "detect", settings, det_sessions, self._detect, metrics
        )
        self.pose_runner: StageRunner[np.ndarray, np.ndarray, Session] = self._runner(
            "pose", pose_settings, pose_sessions, self._pose, metrics
        )
        self.runners = [self.detect, self.pose_runner]
        self._frames = itertools.count()
        side = detector.input_size
        det_row = detector.preprocess(np.zeros((side, side, 3), np.uint8))[0]
        for size, seconds in warm_up(det_sessions, det_row, settings.max_batch).items():
            self.detect.seed_batch_time(size, seconds)
        crop_w, crop_h = pose.crop_wh
        crop_row = pose.preprocess_crop(np.zeros((crop_h, crop_w, 3), np.uint8))
        for size, seconds in warm_up(pose_sessions, crop_row, pose_settings.max_batch).items():
            self.pose_runner.seed_batch_time(size, seconds)
        for runner in self.runners:
            runner.start()

    @classmethod
    def load(cls, entry: ModelEntry, settings: Settings, store: WeightsStore, metrics: Metrics) -> TopDownBackend:
        td = settings.topdown
        bs = settings.backend(entry.backend or entry.name)
        det_entry = registry.DETECTORS[td.detector]
        det_stored, stored = store.require(det_entry.name), store.require(entry.name)
        return cls(
            entry,
            detector=build.detector(det_entry, det_stored.card, PipelineOptions(max_persons=td.max_persons)),
            pose=build.crop_pose(entry, stored.card),
            det_sessions=load_sessions(det_stored.path, bs, entry.name, spinning=False),
            pose_sessions=load_sessions(stored.path, bs, entry.name, spinning=False),
            settings=bs,
            topdown=td,
            metrics=metrics,
            card=stored.card,
        )

    @property
    def entry_runner(self) -> StageRunner[Prepared, Detections, Session]:
        return self.detect

    def prepare(self, image_rgb: np.ndarray) -> Prepared:
        tensor, geometry = self.detector.preprocess(image_rgb)
        return Prepared(tensor=tensor, geometry=geometry, image_rgb=image_rgb)

    def _detect(self, session: Session, items: list[Prepared]) -> tuple[list[Detections], float]:
        def post(outputs: list[np.ndarray], i: int) -> Detections:
            boxes, scores = self.detector.postprocess(outputs, items[i].geometry)
            image = items[i].image_rgb
            assert image is not None
            rows, crops = make_crops(image, boxes, self.pose, padding=self.padding, flip_test=self.flip_test)
            return Detections(rows=rows, crops=crops, scores=scores)

        return run_rows(session, [i.tensor for i in items], post)

    def _pose(self, session: Session, rows: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
        return run_rows(session, rows, lambda out, _: self.pose.postprocess_crop(out))

    def prepare_cadenced(self, image_rgb: np.ndarray, cadence: DetectionCadence) -> Prepared | Detections:
        """The detector's input when `cadence` says the detector runs on this frame, else the pose
        rows cut around the carried persons' boxes (runs in a thread, like `prepare`)."""
        if cadence.due():
            return self.prepare(image_rgb)
        rows, crops = make_crops(image_rgb, cadence.boxes, self.pose, padding=self.padding, flip_test=self.flip_test)
        return Detections(rows=rows, crops=crops, scores=cadence.det_scores)

    async def infer_cadenced(
        self,
        item: Prepared | Detections,
        cadence: DetectionCadence,
        *,
        deadline: float,
        wait_s: float,
        key: Hashable,
        ticket: Ticket | None = None,
    ) -> ItemResult[Persons]:
        """Persons of one frame `prepare_cadenced` made ready; the result is recorded in `cadence`.
        `ticket` (the detect stage's slot) is used only when the detector runs on this frame."""
        if isinstance(item, Prepared):
            result = await self.infer(item, deadline=deadline, wait_s=wait_s, key=key, ticket=ticket)
        else:
            started = time.monotonic()
            result = await self.pose_stage(item, None, started=started, deadline=deadline, wait_s=wait_s, key=key)
        cadence.record(result.value, detected=isinstance(item, Prepared))
        return result

    async def infer(
        self, prepared: Prepared, *, deadline: float, wait_s: float, key: Hashable = None, ticket: Ticket | None = None
    ) -> ItemResult[Persons]:
        started = time.monotonic()
        det = await await_result(self.detect.submit(prepared, deadline=deadline, key=key, ticket=ticket), wait_s)
        return await self.pose_stage(det.value, det, started=started, deadline=deadline, wait_s=wait_s, key=key)

    async def pose_stage(
        self,
        found: Detections,
        det: ItemResult[Detections] | None,
        *,
        started: float,
        deadline: float,
        wait_s: float,
        key: Hashable,
    ) -> ItemResult[Persons]:
        """Pose rows of one frame through the pose stage (each crop by `_crop`); timings add the detect
        stage's (`det`) if it ran. A crop's timings add over its stages, a frame waits for its slowest crop."""
        det_queue_s, det_inference_s = (det.queue_s, det.inference_s) if det is not None else (0.0, 0.0)
        if not found.rows:
            return ItemResult(Persons.empty(), det_queue_s, det_inference_s, det.batch_size if det is not None else 0)
        frame_key = (key, next(self._frames))
        futures: list[Future[Any]] = []
        tasks = [asyncio.ensure_future(self._crop(row, frame_key, deadline, futures)) for row in found.rows]
        try:
            left_s = wait_s - (time.monotonic() - started)
            done = await asyncio.wait_for(asyncio.gather(*tasks), timeout=max(0.0, left_s))
        finally:
            for t in tasks:
                t.cancel()
            for f in futures:
                f.cancel()  # no-op for finished ones; frees queue slots after a failure
        persons = assemble(
            [k for k, _ in done], found.crops, found.scores, flip_test=self.flip_test, crop_w=self.pose.crop_wh[0]
        )
        return ItemResult(
            persons,
            queue_s=det_queue_s + max(sum(r.queue_s for r in rs) for _, rs in done),
            inference_s=det_inference_s + max(sum(r.inference_s for r in rs) for _, rs in done),
            batch_size=max(r.batch_size for _, rs in done for r in rs),
        )

    async def _crop(
        self, row: np.ndarray, frame_key: Hashable, deadline: float, futures: list[Future[Any]]
    ) -> tuple[np.ndarray, list[ItemResult[Any]]]:
        """One crop's keypoints and the result of every stage it went through (here: the pose stage).
        Each submitted future goes into `futures`, cancelled when the frame ends."""
        future = self.pose_runner.submit(row, deadline=deadline, key=frame_key)
        futures.append(future)
        result: ItemResult[np.ndarray] = await asyncio.wrap_future(future)
        return result.value, [result]


def crop_stage_settings(settings: BackendSettings, topdown: TopDownSettings) -> BackendSettings:
    """A crop stage's batching: crops of admitted frames keep an item bound (at least
    `topdown.pose_max_queue`); their time bound is the request's deadline, not `max_queue_delay_ms`."""
    return settings.model_copy(
        update={"max_queue": max(settings.max_queue, topdown.pose_max_queue), "max_queue_delay_ms": None}
    )
