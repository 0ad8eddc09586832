"""Quality-gated top-down backends (SHaRPose): detector -> crops -> coarse graph on every crop
(stage "pose") -> fine graph only on the crops whose predicted quality Q is below the backend's
``quality_threshold`` (stage "fine").

The fine stage is a `StageRunner` of its own: crops that need refinement, from any frame, are
batched together as soon as their coarse result is in, so a batch of easy crops never pays for the
fine graph and hard crops do not wait for the easy ones. Every crop's decision is counted in
``poseserve_quality_gate_total{backend, decision}`` (``refined`` / ``coarse``); the fine stage's
batch sizes are ``poseserve_batch_size{backend, stage="fine"}``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from models import registry
from models.card import ModelCard
from models.pipelines import build
from models.pipelines.base import Detector, PipelineOptions
from models.pipelines.sharpose import GatedCropPose
from models.registry import ModelEntry
from models.runtime import Session
from models.weights import WeightsStore
from service.backends.sessions import load_sessions, run_rows
from service.backends.topdown import TopDownBackend, crop_stage_settings
from service.config import BackendSettings, Settings, TopDownSettings
from service.engine import ItemResult, StageRunner
from service.metrics import Metrics

__all__ = ["CoarseResult", "FineSession", "GatedTopDownBackend"]

FineRow = tuple[np.ndarray, ...]
"""One crop's fine-graph inputs (no batch axis), in the graph's input order."""


class FineSession(Protocol):
    """A session of a graph with several inputs (``OrtModel`` is one)."""

    @property
    def output_names(self) -> Sequence[str]: ...

    def run_inputs(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class CoarseResult:
    """One crop after the coarse stage: its keypoints when the gate stops there, else what the fine
    stage needs."""

    quality: float
    keypoints: np.ndarray | None
    fine: FineRow | None


class GatedTopDownBackend(TopDownBackend):
    """`TopDownBackend` with a third stage; sessions given directly (tests), or see `load`."""

    pose: GatedCropPose

    def __init__(
        self,
        entry: ModelEntry,
        *,
        detector: Detector,
        pose: GatedCropPose,
        det_sessions: Sequence[Session],
        pose_sessions: Sequence[Session],
        fine_sessions: Sequence[FineSession],
        settings: BackendSettings,
        topdown: TopDownSettings,
        metrics: Metrics,
        card: ModelCard | None = None,
    ) -> None:
        self.entry = entry
        self.quality_threshold = settings.quality_threshold
        self._decisions = {
            d: metrics.quality_gate_total.labels(backend=self.name, decision=d) for d in ("refined", "coarse")
        }
        fine_settings = crop_stage_settings(settings, topdown)
        self.fine_runner: StageRunner[FineRow, np.ndarray, FineSession] = StageRunner(
            backend=self.name,
            stage="fine",
            settings=fine_settings,
            sessions=fine_sessions,
            run_batch=self._fine,
            metrics=metrics,
        )
        crop_w, crop_h = pose.crop_wh
        row = pose.preprocess_crop(np.zeros((crop_h, crop_w, 3), np.uint8))
        # warm the fine graph with a coarse result of a blank crop, before the others start serving
        coarse_out = [o[0] for o in pose_sessions[0].run(row[None])]
        fine_row = pose.fine_row(row, coarse_out)
        for size, seconds in _warm_up(fine_sessions, fine_row, fine_settings.max_batch).items():
            self.fine_runner.seed_batch_time(size, seconds)
        super().__init__(
            entry,
            detector=detector,
            pose=pose,
            det_sessions=det_sessions,
            pose_sessions=pose_sessions,
            settings=settings,
            topdown=topdown,
            metrics=metrics,
            card=card,
        )
        self.runners = [*self.runners, self.fine_runner]
        self.fine_runner.start()

    @classmethod
    def load(cls, entry: ModelEntry, settings: Settings, store: WeightsStore, metrics: Metrics) -> GatedTopDownBackend:
        td = settings.topdown
        bs = settings.backend(entry.backend or entry.name)
        det_entry = registry.DETECTORS[td.detector]
        det_stored, stored = store.require(det_entry.name), store.require(entry.name)
        pose = build.crop_pose(entry, stored.card)
        if not isinstance(pose, GatedCropPose):
            raise TypeError(f"{entry.pipeline} built a {type(pose).__name__}, expected a GatedCropPose")
        fine_stored = store.require(pose.fine_model)
        fine_sessions: Any = load_sessions(fine_stored.path, bs, entry.name, spinning=False)  # OrtModels
        return cls(
            entry,
            detector=build.detector(det_entry, det_stored.card, PipelineOptions(max_persons=td.max_persons)),
            pose=pose,
            det_sessions=load_sessions(det_stored.path, bs, entry.name, spinning=False),
            pose_sessions=load_sessions(stored.path, bs, entry.name, spinning=False),
            fine_sessions=fine_sessions,
            settings=bs,
            topdown=td,
            metrics=metrics,
            card=stored.card,
        )

    # -- stages ----------------------------------------------------------------------------------
    def _pose(self, session: Session, rows: list[np.ndarray]) -> tuple[list[CoarseResult], float]:  # type: ignore[override]
        def post(outputs: list[np.ndarray], i: int) -> CoarseResult:
            quality = self.pose.quality(outputs)
            if quality >= self.quality_threshold:
                self._decisions["coarse"].inc()
                return CoarseResult(quality, self.pose.postprocess_crop(outputs), None)
            self._decisions["refined"].inc()
            return CoarseResult(quality, None, self.pose.fine_row(rows[i], outputs))

        return run_rows(session, rows, post)

    def _fine(self, session: FineSession, rows: list[FineRow]) -> tuple[list[np.ndarray], float]:
        inputs = [np.stack(parts) for parts in zip(*rows, strict=True)]
        started = time.perf_counter()
        (heatmaps,) = session.run_inputs(inputs)
        inference_s = time.perf_counter() - started
        return [self.pose.decode_fine(heatmaps[i]) for i in range(len(rows))], inference_s

    async def _crop(
        self, row: np.ndarray, frame_key: Hashable, deadline: float, futures: list[Future[Any]]
    ) -> tuple[np.ndarray, list[ItemResult[Any]]]:
        """The gate: the crop's coarse result, then the fine stage if its quality asks for it
        (whatever ran the detector: a request, a camera frame, carried boxes)."""
        coarse_future = self.pose_runner.submit(row, deadline=deadline, key=frame_key)
        futures.append(coarse_future)
        coarse: ItemResult[CoarseResult] = await asyncio.wrap_future(coarse_future)  # type: ignore[arg-type]
        if coarse.value.fine is None:
            assert coarse.value.keypoints is not None
            return coarse.value.keypoints, [coarse]
        fine_future = self.fine_runner.submit(coarse.value.fine, deadline=deadline, key=frame_key)
        futures.append(fine_future)
        fine = await asyncio.wrap_future(fine_future)
        return fine.value, [coarse, fine]


def _warm_up(sessions: Sequence[FineSession], row: FineRow, max_batch: int) -> dict[int, float]:
    """`sessions.warm_up` for a graph of several inputs: {batch size: seconds} of batches of 1 and `max_batch`."""
    full = [np.stack([part] * max_batch) for part in row]
    for session in sessions:
        session.run_inputs(full)
    seconds: dict[int, float] = {}
    for size in sorted({1, max_batch}):
        started = time.perf_counter()
        sessions[0].run_inputs([part[:size] for part in full])
        seconds[size] = time.perf_counter() - started
    return seconds
