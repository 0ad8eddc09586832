"""Loaded backends: the pipeline of each, its ORT sessions and its `StageRunner`.

Backends in `Settings.preload` load at start-up; any other registered backend loads on first use.
A backend whose weights are not in the store raises `WeightsMissingError` (HTTP 409).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.pipelines import Persons, SingleStagePipeline, make_single_stage
from models.registry import BACKENDS, BackendSpec
from models.runtime import OrtModel
from models.transforms import Letterbox
from models.weights import WeightsStore
from service.config import Settings
from service.engine import ItemResult, StageRunner
from service.errors import BackendUnavailableError, UnknownBackendError, WeightsMissingError
from service.metrics import Metrics

__all__ = ["BackendManager", "LoadedBackend", "Prepared"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """One preprocessed image, ready to be batched."""

    tensor: np.ndarray
    geometry: Letterbox


class LoadedBackend:
    def __init__(self, spec: BackendSpec, settings: Settings, store: WeightsStore, metrics: Metrics) -> None:
        self.spec = spec
        self.settings = settings.backend(spec.name)
        self.pipeline: SingleStagePipeline = make_single_stage(spec, self.settings.input_size)
        path = store.onnx_path(spec.weights)
        try:
            sessions = [
                OrtModel(
                    path,
                    providers=self.settings.providers,
                    intra_op_threads=self.settings.intra_op_threads,
                    fp16=self.settings.fp16,
                )
                for _ in range(self.settings.workers)
            ]
        except Exception as exc:  # a corrupt or incompatible file must not take the service down
            raise BackendUnavailableError(f"backend {spec.name}: cannot load {path}: {exc}") from exc
        self.providers = sessions[0].providers
        self.card = store.card(spec.weights) or {}
        self.runner: StageRunner[Prepared, Persons, OrtModel] = StageRunner(
            backend=spec.name,
            stage="pose",
            settings=self.settings,
            sessions=sessions,
            run_batch=self._run_batch,
            metrics=metrics,
        )
        self.runner.start()

    def prepare(self, image_rgb: np.ndarray) -> Prepared:
        tensor, geometry = self.pipeline.preprocess(image_rgb)
        return Prepared(tensor=tensor, geometry=geometry)

    async def infer(
        self, prepared: Prepared, *, deadline: float, wait_s: float, key: Hashable = None
    ) -> ItemResult[Persons]:
        """Queue one prepared image and await its persons.

        `deadline` (monotonic s) bounds the time spent queued; `wait_s` bounds the whole wait
        (raises TimeoutError, and the queued item is cancelled). Raises `QueueFullError`.
        """
        future = self.runner.submit(prepared, deadline=deadline, key=key)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout=max(0.0, wait_s))

    def _run_batch(self, session: OrtModel, items: list[Prepared]) -> tuple[list[Persons], float]:
        batch = np.stack([item.tensor for item in items])
        started = time.perf_counter()
        outputs = session.run(batch)
        inference_s = time.perf_counter() - started
        return [
            self.pipeline.postprocess([o[i] for o in outputs], item.geometry) for i, item in enumerate(items)
        ], inference_s

    def stop(self) -> None:
        self.runner.stop()


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

    def get(self, name: str) -> LoadedBackend:
        """The loaded backend `name`, loading it now if needed (blocking: call off the event loop)."""
        spec = self.spec(name)
        with self._lock:
            backend = self._loaded.get(name)
            if backend is not None:
                return backend
            if not self._store.available(spec.weights):
                hint = f"run `poseserve models pull {spec.weights}`" if spec.pretrained else "train or export it"
                raise WeightsMissingError(f"backend {name} has no weights in {self._store.model_dir}: {hint}")
            backend = LoadedBackend(spec, self._settings, self._store, self._metrics)
            self._loaded[name] = backend
            logger.info("backend %s ready (%d workers, %s)", name, backend.runner.worker_count, backend.providers)
            return backend

    def loaded(self, name: str) -> LoadedBackend | None:
        return self._loaded.get(name)

    def healthy(self) -> bool:
        """Every loaded backend still has all of its workers alive."""
        return all(b.runner.alive_workers == b.runner.worker_count for b in self._loaded.values())

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
                    "pretrained": spec.pretrained,
                    "weights_present": self._store.available(spec.weights),
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
