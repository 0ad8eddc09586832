"""`BackendManager`: backends by catalogue name, loaded once (preloaded at start or on first use).

A backend whose weights are not in the store raises `WeightsMissingError` (HTTP 409) saying how to
get them; with `allow_untrained`, a seed network without weights is exported with random ones.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from models import registry
from models.registry import ModelEntry
from models.weights import WeightsStore
from service.backends.base import LoadedBackend
from service.backends.gated import GatedTopDownBackend
from service.backends.single_stage import SingleStageBackend
from service.backends.topdown import TopDownBackend
from service.config import Settings
from service.errors import UnknownBackendError, WeightsMissingError
from service.metrics import Metrics

__all__ = ["BackendManager"]

logger = logging.getLogger(__name__)


class BackendManager:
    def __init__(self, settings: Settings, store: WeightsStore, metrics: Metrics) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._loaded: dict[str, LoadedBackend] = {}
        self._lock = threading.Lock()

    def spec(self, name: str) -> ModelEntry:
        """The catalogue entry of backend `name`; `UnknownBackendError` names the known ones."""
        try:
            return registry.BACKENDS[name]
        except KeyError:
            known = ", ".join(sorted(registry.BACKENDS))
            raise UnknownBackendError(f"unknown backend {name!r}; known backends: {known}") from None

    def weights_needed(self, entry: ModelEntry) -> list[str]:
        if entry.kind == "top-down":
            return [self._settings.topdown.detector, entry.name]
        return [entry.name]

    def get(self, name: str) -> LoadedBackend:
        """The loaded backend `name`, loading it now if needed (blocking: call off the event loop)."""
        entry = self.spec(name)
        with self._lock:
            backend = self._loaded.get(name)
            if backend is not None:
                return backend
            self._check_weights(entry)
            kind: type[TopDownBackend] | type[SingleStageBackend] = (
                TopDownBackend if entry.kind == "top-down" else SingleStageBackend
            )
            kind = GatedTopDownBackend if entry.quality_gate else kind
            backend = kind.load(entry, self._settings, self._store, self._metrics)
            self._loaded[name] = backend
            self._metrics.backend_info.labels(backend=name, runtime=backend.runtime, precision=backend.precision).set(1)
            logger.info(
                "backend %s ready (%d workers, %s, %s %s)",
                name,
                backend.worker_count,
                backend.providers,
                backend.runtime,
                backend.precision,
            )
            return backend

    def _check_weights(self, entry: ModelEntry) -> None:
        """Raise `WeightsMissingError` saying how to get them; export random ones if allowed."""
        allow_untrained = self._settings.allow_untrained
        missing = [w for w in self.weights_needed(entry) if not self._store.available(w)]
        if entry.name in missing and not entry.pretrained and allow_untrained:
            self._export_untrained(entry)
            missing.remove(entry.name)
        if missing:
            hints = [
                f"poseserve models pull {w}"
                if registry.MODELS[w].pretrained
                else f"poseserve export {w} --checkpoint CKPT"
                for w in missing
            ]
            raise WeightsMissingError(
                f"backend {entry.backend} lacks weights {', '.join(missing)} in {self._store.model_dir}: "
                f"run `{' && '.join(hints)}`"
                + ("" if entry.pretrained else " (or serve random weights with --allow-untrained)")
            )
        card = self._store.require(entry.name).card
        if card.untrained and not allow_untrained:
            raise WeightsMissingError(
                f"backend {entry.backend} has only untrained (random) weights; export a trained checkpoint with "
                f"`poseserve export {entry.name} --checkpoint CKPT`, or start with --allow-untrained (benchmarks)"
            )

    def _export_untrained(self, entry: ModelEntry) -> None:
        try:
            from models.export import export_to_store
        except ImportError as exc:
            raise WeightsMissingError(
                f"backend {entry.backend}: exporting untrained weights needs the 'train' extra (torch): {exc}"
            ) from exc
        logger.warning("backend %s: exporting UNTRAINED (random) weights for benchmarking", entry.backend)
        export_to_store(entry.name, self._store.model_dir)

    async def acquire(self, name: str) -> LoadedBackend:
        """`get` from the event loop: a backend not loaded yet loads in a worker thread."""
        loaded = self._loaded.get(name)
        return loaded if loaded is not None else await asyncio.to_thread(self.get, name)

    def loaded(self, name: str) -> LoadedBackend | None:
        return self._loaded.get(name)

    def healthy(self) -> bool:
        """Every loaded backend still has all of its workers alive."""
        return all(b.healthy for b in self._loaded.values())

    def problems(self) -> list[str]:
        """Every stage of a loaded backend with dead workers, named (readiness)."""
        return [problem for backend in self._loaded.values() for problem in backend.problems()]

    def describe(self) -> list[dict[str, Any]]:
        rows = []
        for name, entry in sorted(registry.BACKENDS.items()):
            loaded = self._loaded.get(name)
            bs = loaded.settings if loaded is not None and loaded.settings is not None else self._settings.backend(name)
            rows.append(
                {
                    "name": name,
                    "kind": entry.kind,
                    "input_size": bs.input_size or entry.input_hw[0],
                    "codec": entry.codec,
                    "detector": self._settings.topdown.detector if entry.kind == "top-down" else None,
                    "pretrained": entry.pretrained,
                    "weights_present": all(self._store.available(w) for w in self.weights_needed(entry)),
                    "loaded": loaded is not None,
                    "providers": loaded.providers if loaded else [],
                    "runtime": loaded.runtime if loaded else bs.runtime,
                    "precision": loaded.precision if loaded else bs.precision,
                    "max_batch": bs.max_batch,
                    "max_wait_ms": bs.max_wait_ms,
                    "workers": bs.workers,
                    "description": entry.description,
                }
            )
        return rows

    def close(self) -> None:
        with self._lock:
            for backend in self._loaded.values():
                backend.stop()
            self._loaded.clear()
