"""Loaded backends: pipelines, ORT sessions and `StageRunner`s, behind one `infer` coroutine.

- single-stage: image -> one batched model run (stage "pose") -> persons.
- top-down: image -> detector (stage "detect", frames batched) -> affine crops -> pose model
  (stage "pose", crops from many frames batched; each frame is its own fairness key, so a frame
  with 40 people is spread over several batches without starving other frames).

Backends in `Settings.preload` load at start-up; any other registered backend loads on first use.
A backend whose weights are not in the store raises `WeightsMissingError` (HTTP 409).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from models.factory import crop_pose, detector, single_stage_pipeline
from models.pipelines import Persons, SingleStagePipeline
from models.registry import BACKENDS, BackendSpec
from models.runtime import OrtModel
from models.topdown import CropBox, CropPose, Detector, assemble, make_crops
from models.transforms import Letterbox
from models.weights import WeightsStore
from service.config import BackendSettings, Settings, TopDownSettings
from service.engine import ItemResult, StageRunner
from service.errors import BackendUnavailableError, UnknownBackendError, WeightsMissingError
from service.metrics import Metrics

__all__ = ["BackendManager", "LoadedBackend", "Prepared", "SingleStageBackend", "TopDownBackend"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Prepared:
    """One preprocessed image, ready to be batched (top-down keeps the image to cut crops from)."""

    tensor: np.ndarray
    geometry: Letterbox
    image_rgb: np.ndarray | None = None


@dataclass(frozen=True)
class Detections:
    """One frame after the detect stage: pose rows to run, their crop geometry, box scores."""

    rows: list[np.ndarray]
    crops: list[CropBox]
    scores: np.ndarray


def _sessions(path: Any, settings: BackendSettings, name: str, *, spinning: bool) -> list[OrtModel]:
    if settings.ort_spinning is not None:
        spinning = settings.ort_spinning
    try:
        return [
            OrtModel(
                path,
                providers=settings.providers,
                intra_op_threads=settings.intra_op_threads,
                fp16=settings.fp16,
                allow_spinning=spinning,
            )
            for _ in range(settings.workers)
        ]
    except Exception as exc:  # a corrupt or incompatible file must not take the service down
        raise BackendUnavailableError(f"backend {name}: cannot load {path}: {exc}") from exc


def _run_rows(
    session: OrtModel, rows: Sequence[np.ndarray], post: Callable[[list[np.ndarray], int], T]
) -> tuple[list[T], float]:
    """Stack rows, run the session once, post-process each row's slice: (outputs, model seconds)."""
    started = time.perf_counter()
    outputs = session.run(np.stack(rows))
    inference_s = time.perf_counter() - started
    return [post([o[i] for o in outputs], i) for i in range(len(rows))], inference_s


def _warm_up(sessions: Sequence[OrtModel], rows: list[np.ndarray]) -> None:
    """One run per session before serving: the first request must not pay for ORT's first run."""
    for session in sessions:
        session.run(np.stack(rows))


async def _await(future: Future[ItemResult[T]], wait_s: float) -> ItemResult[T]:
    return await asyncio.wait_for(asyncio.wrap_future(future), timeout=max(0.0, wait_s))


class LoadedBackend:
    """What the API and the stream scheduler use: `prepare` (in a thread), then `await infer`."""

    spec: BackendSpec
    providers: list[str]
    card: dict[str, Any]
    runners: list[StageRunner[Any, Any, OrtModel]]

    def prepare(self, image_rgb: np.ndarray) -> Prepared:
        raise NotImplementedError

    async def infer(
        self, prepared: Prepared, *, deadline: float, wait_s: float, key: Hashable = None
    ) -> ItemResult[Persons]:
        """Persons of one prepared image.

        `deadline` (monotonic s) bounds the time spent queued; `wait_s` bounds the whole wait
        (raises TimeoutError; queued work is cancelled). Raises `QueueFullError` when full.
        """
        raise NotImplementedError

    @property
    def healthy(self) -> bool:
        return all(r.alive_workers == r.worker_count for r in self.runners)

    @property
    def worker_count(self) -> int:
        return sum(r.worker_count for r in self.runners)

    def stop(self) -> None:
        for runner in self.runners:
            runner.stop()


class SingleStageBackend(LoadedBackend):
    """One model over whole images; the pipeline and sessions are given (tests pass fakes); see `load`."""

    def __init__(
        self,
        spec: BackendSpec,
        *,
        pipeline: SingleStagePipeline,
        sessions: Sequence[OrtModel],
        settings: BackendSettings,
        metrics: Metrics,
        card: dict[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.pipeline = pipeline
        bs = settings
        self.providers = list(getattr(sessions[0], "providers", []))
        self.card = card or {}
        self.runner: StageRunner[Prepared, Persons, OrtModel] = StageRunner(
            backend=spec.name, stage="pose", settings=bs, sessions=sessions, run_batch=self._run_batch, metrics=metrics
        )
        self.runners = [self.runner]
        blank = np.zeros((pipeline.input_size, pipeline.input_size, 3), np.uint8)
        _warm_up(sessions, [pipeline.preprocess(blank)[0]])
        self.runner.start()

    @classmethod
    def load(cls, spec: BackendSpec, settings: Settings, store: WeightsStore, metrics: Metrics) -> SingleStageBackend:
        bs = settings.backend(spec.name)
        card = store.card(spec.weights)
        return cls(
            spec,
            pipeline=single_stage_pipeline(spec, bs.input_size, card),
            sessions=_sessions(store.onnx_path(spec.weights), bs, spec.name, spinning=True),
            settings=bs,
            metrics=metrics,
            card=card,
        )

    def prepare(self, image_rgb: np.ndarray) -> Prepared:
        tensor, geometry = self.pipeline.preprocess(image_rgb)
        return Prepared(tensor=tensor, geometry=geometry)

    def _run_batch(self, session: OrtModel, items: list[Prepared]) -> tuple[list[Persons], float]:
        return _run_rows(
            session, [i.tensor for i in items], lambda out, i: self.pipeline.postprocess(out, items[i].geometry)
        )

    async def infer(
        self, prepared: Prepared, *, deadline: float, wait_s: float, key: Hashable = None
    ) -> ItemResult[Persons]:
        return await _await(self.runner.submit(prepared, deadline=deadline, key=key), wait_s)


class TopDownBackend(LoadedBackend):
    """Detector and pose model given as objects with their sessions (tests pass fakes); see `load`."""

    def __init__(
        self,
        spec: BackendSpec,
        *,
        detector: Detector,
        pose: CropPose,
        det_sessions: Sequence[OrtModel],
        pose_sessions: Sequence[OrtModel],
        settings: BackendSettings,
        topdown: TopDownSettings,
        metrics: Metrics,
        card: dict[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.flip_test, self.padding = topdown.flip_test, topdown.padding
        self.detector, self.pose = detector, pose
        bs = settings
        pose_settings = bs.model_copy(update={"max_queue": max(bs.max_queue, topdown.pose_max_queue)})
        self.providers = list(getattr(pose_sessions[0], "providers", []))
        self.card = card or {}
        self.detect: StageRunner[Prepared, Detections, OrtModel] = StageRunner(
            backend=spec.name,
            stage="detect",
            settings=bs,
            sessions=det_sessions,
            run_batch=self._detect,
            metrics=metrics,
        )
        self.pose_runner: StageRunner[np.ndarray, np.ndarray, OrtModel] = StageRunner(
            backend=spec.name,
            stage="pose",
            settings=pose_settings,
            sessions=pose_sessions,
            run_batch=self._pose,
            metrics=metrics,
        )
        self.runners = [self.detect, self.pose_runner]
        self._frames = itertools.count()
        side = detector.input_size
        _warm_up(det_sessions, [detector.preprocess(np.zeros((side, side, 3), np.uint8))[0]])
        crop_w, crop_h = pose.crop_wh
        _warm_up(pose_sessions, [pose.preprocess_crop(np.zeros((crop_h, crop_w, 3), np.uint8))])
        for runner in self.runners:
            runner.start()

    @classmethod
    def load(cls, spec: BackendSpec, settings: Settings, store: WeightsStore, metrics: Metrics) -> TopDownBackend:
        td = settings.topdown
        bs = settings.backend(spec.name)
        card = store.card(spec.weights)
        return cls(
            spec,
            detector=detector(td.detector, max_persons=td.max_persons),
            pose=crop_pose(spec, card),
            det_sessions=_sessions(store.onnx_path(td.detector), bs, spec.name, spinning=False),
            pose_sessions=_sessions(store.onnx_path(spec.weights), bs, spec.name, spinning=False),
            settings=bs,
            topdown=td,
            metrics=metrics,
            card=card,
        )

    def prepare(self, image_rgb: np.ndarray) -> Prepared:
        tensor, geometry = self.detector.preprocess(image_rgb)
        return Prepared(tensor=tensor, geometry=geometry, image_rgb=image_rgb)

    def _detect(self, session: OrtModel, items: list[Prepared]) -> tuple[list[Detections], float]:
        def post(outputs: list[np.ndarray], i: int) -> Detections:
            boxes, scores = self.detector.postprocess(outputs, items[i].geometry)
            image = items[i].image_rgb
            assert image is not None
            rows, crops = make_crops(image, boxes, self.pose, padding=self.padding, flip_test=self.flip_test)
            return Detections(rows=rows, crops=crops, scores=scores)

        return _run_rows(session, [i.tensor for i in items], post)

    def _pose(self, session: OrtModel, rows: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
        return _run_rows(session, rows, lambda out, _: self.pose.postprocess_crop(out))

    async def infer(
        self, prepared: Prepared, *, deadline: float, wait_s: float, key: Hashable = None
    ) -> ItemResult[Persons]:
        started = time.monotonic()
        det = await _await(self.detect.submit(prepared, deadline=deadline, key=key), wait_s)
        found = det.value
        if not found.rows:
            return ItemResult(Persons.empty(), det.queue_s, det.inference_s, det.batch_size)
        frame_key = (key, next(self._frames))
        futures: list[Future[ItemResult[np.ndarray]]] = []
        try:
            for row in found.rows:
                futures.append(self.pose_runner.submit(row, deadline=deadline, key=frame_key))
            left_s = wait_s - (time.monotonic() - started)
            results = await asyncio.wait_for(
                asyncio.gather(*(asyncio.wrap_future(f) for f in futures)), timeout=max(0.0, left_s)
            )
        finally:
            for f in futures:
                f.cancel()  # no-op for finished ones; frees queue slots after a failure
        persons = assemble(
            [r.value for r in results], found.crops, found.scores, flip_test=self.flip_test, crop_w=self.pose.crop_wh[0]
        )
        return ItemResult(
            persons,
            queue_s=det.queue_s + max(r.queue_s for r in results),
            inference_s=det.inference_s + max(r.inference_s for r in results),
            batch_size=max(r.batch_size for r in results),
        )


class BackendManager:
    def __init__(self, settings: Settings, store: WeightsStore, metrics: Metrics) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._loaded: dict[str, LoadedBackend] = {}
        self._lock = threading.Lock()

    def spec(self, name: str) -> BackendSpec:
        try:
            return BACKENDS[name]
        except KeyError:
            known = ", ".join(sorted(BACKENDS))
            raise UnknownBackendError(f"unknown backend {name!r}; known backends: {known}") from None

    def weights_needed(self, spec: BackendSpec) -> list[str]:
        if spec.kind == "top-down":
            return [self._settings.topdown.detector, spec.weights]
        return [spec.weights]

    def get(self, name: str) -> LoadedBackend:
        """The loaded backend `name`, loading it now if needed (blocking: call off the event loop)."""
        spec = self.spec(name)
        with self._lock:
            backend = self._loaded.get(name)
            if backend is not None:
                return backend
            self._check_weights(spec)
            kind = TopDownBackend if spec.kind == "top-down" else SingleStageBackend
            backend = kind.load(spec, self._settings, self._store, self._metrics)
            self._loaded[name] = backend
            logger.info("backend %s ready (%d workers, %s)", name, backend.worker_count, backend.providers)
            return backend

    def _check_weights(self, spec: BackendSpec) -> None:
        """Raise `WeightsMissingError` saying how to get them; export random ones if allowed."""
        allow_untrained = self._settings.allow_untrained
        missing = [w for w in self.weights_needed(spec) if not self._store.available(w)]
        if spec.weights in missing and not spec.pretrained and allow_untrained:
            self._export_untrained(spec)
            missing.remove(spec.weights)
        if missing:
            hints = [
                f"poseserve models pull {w}"
                if w != spec.weights or spec.pretrained
                else f"poseserve export {w} --checkpoint CKPT"
                for w in missing
            ]
            raise WeightsMissingError(
                f"backend {spec.name} lacks weights {', '.join(missing)} in {self._store.model_dir}: "
                f"run `{' && '.join(hints)}`"
                + ("" if spec.pretrained else " (or serve random weights with --allow-untrained)")
            )
        card = self._store.card(spec.weights) or {}
        if card.get("untrained") and not allow_untrained:
            raise WeightsMissingError(
                f"backend {spec.name} has only untrained (random) weights; export a trained checkpoint with "
                f"`poseserve export {spec.weights} --checkpoint CKPT`, or start with --allow-untrained (benchmarks)"
            )

    def _export_untrained(self, spec: BackendSpec) -> None:
        try:
            from models.zoo import export_to_store
        except ImportError as exc:
            raise WeightsMissingError(
                f"backend {spec.name}: exporting untrained weights needs the 'train' extra (torch): {exc}"
            ) from exc
        logger.warning("backend %s: exporting UNTRAINED (random) weights for benchmarking", spec.name)
        export_to_store(spec.weights, self._store.model_dir)

    async def acquire(self, name: str) -> LoadedBackend:
        """`get` from the event loop: a backend not loaded yet loads in a worker thread."""
        loaded = self._loaded.get(name)
        return loaded if loaded is not None else await asyncio.to_thread(self.get, name)

    def loaded(self, name: str) -> LoadedBackend | None:
        return self._loaded.get(name)

    def healthy(self) -> bool:
        """Every loaded backend still has all of its workers alive."""
        return all(b.healthy for b in self._loaded.values())

    def describe(self) -> list[dict[str, Any]]:
        rows = []
        for name, spec in sorted(BACKENDS.items()):
            loaded = self._loaded.get(name)
            bs = self._settings.backend(name)
            rows.append(
                {
                    "name": name,
                    "kind": spec.kind,
                    "input_size": bs.input_size or spec.input_size,
                    "codec": spec.codec,
                    "detector": self._settings.topdown.detector if spec.kind == "top-down" else None,
                    "pretrained": spec.pretrained,
                    "weights_present": all(self._store.available(w) for w in self.weights_needed(spec)),
                    "loaded": loaded is not None,
                    "providers": loaded.providers if loaded else [],
                    "max_batch": bs.max_batch,
                    "max_wait_ms": bs.max_wait_ms,
                    "workers": bs.workers,
                    "description": spec.description,
                }
            )
        return rows

    def close(self) -> None:
        with self._lock:
            for backend in self._loaded.values():
                backend.stop()
            self._loaded.clear()
