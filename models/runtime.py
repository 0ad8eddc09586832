"""ONNX Runtime session wrapper: provider selection, thread counts, batched run.

numpy + onnxruntime only (serving path). `onnxruntime-gpu` silently falls back to the CPU when
CUDA is unusable, so the providers actually in use are read back from the session and exposed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import onnxruntime as ort

__all__ = ["PROVIDER_NAMES", "EngineCache", "OrtModel", "Session", "engine_cache_folder", "resolve_providers"]

logger = logging.getLogger(__name__)

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8}

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def nvidia_device_present() -> bool:
    """True when an NVIDIA driver is loaded (the GPU providers cannot work without one)."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def resolve_providers(
    wanted: Sequence[str], *, fp16: bool = False, engine_cache: Callable[[], EngineCache | None] | None = None
) -> list[str | tuple[str, dict[str, str]]]:
    """Map short names (`tensorrt`, `cuda`, `cpu`) to the ORT providers this build offers.

    GPU providers are skipped where no NVIDIA driver is present (onnxruntime-gpu would only log
    load failures and fall back). The CPU provider is always last so a session can be created.
    TensorRT keeps the engines it builds (minutes for a model) where `engine_cache` says, asked only
    when TensorRT is chosen; None there, or no `engine_cache`: built at every start.
    """
    available = set(ort.get_available_providers())
    if not nvidia_device_present():
        available &= {"CPUExecutionProvider"}
    chosen: list[str | tuple[str, dict[str, str]]] = []
    for short in wanted:
        full = PROVIDER_NAMES[short]
        if full not in available or full == "CPUExecutionProvider":
            continue
        if full == "TensorrtExecutionProvider":
            options = {"trt_fp16_enable": "True" if fp16 else "False"}
            if (cache := engine_cache() if engine_cache is not None else None) is not None:
                options |= {
                    "trt_engine_cache_enable": "True",
                    "trt_engine_cache_path": str(cache.engines),
                    "trt_timing_cache_enable": "True",
                    "trt_timing_cache_path": str(cache.timing),
                }
            chosen.append((full, options))
        else:
            chosen.append(full)
    chosen.append("CPUExecutionProvider")
    return chosen


@functools.lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # cache key only: a rewritten file is read again
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class EngineCache(NamedTuple):
    """Where TensorRT keeps a model's engines, and the kernel timings any model of the same
    versions reuses."""

    engines: Path
    timing: Path


def engine_cache_folder(path: Path, graph: bytes | None = None) -> EngineCache | None:
    """The TensorRT cache of the ONNX file at `path` (or of `graph`, derived from it), beside the
    file: ``tensorrt/<content hash>-<versions>`` for its engines, ``tensorrt/timing-<versions>``
    for the timings; created. None where they cannot be written (a read-only store: engines are
    then built at every start).

    ONNX Runtime names an engine by the graph's structure and the GPU, not by its weights or the
    versions: a retrained checkpoint of the same graph would load the old engine. A folder per
    content and versions cannot.
    """
    if graph is not None:
        digest = hashlib.sha256(graph).hexdigest()[:16]
    else:  # each worker's session asks: the file is read once
        stat = path.stat()
        digest = _file_digest(str(path), stat.st_size, stat.st_mtime_ns)
    try:
        tensorrt = importlib.metadata.version("tensorrt")
    except importlib.metadata.PackageNotFoundError:
        tensorrt = "system"
    versions = f"ort{ort.__version__}-trt{tensorrt}"
    root = path.parent / "tensorrt"
    cache = EngineCache(root / f"{digest}-{versions}", root / f"timing-{versions}")
    try:
        for folder in cache:
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        logger.warning("TensorRT engines of %s are not kept (%s): built at every start", path.name, exc)
        return None
    if not all(os.access(folder, os.W_OK) for folder in cache):
        logger.warning("TensorRT engines of %s are not kept (%s is read-only)", path.name, root)
        return None
    return cache


class Session(Protocol):
    """What serving needs of an inference session (``OrtModel`` is one; tests pass fakes)."""

    @property
    def output_names(self) -> Sequence[str]: ...

    @property
    def providers(self) -> Sequence[str]: ...

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """One batch (N, ...) -> every output, in ``output_names`` order."""
        ...


class CastBuffer:
    """A session's input cast into one reused array: a batch of another dtype than the model's
    input (uint8 pixels for an int32 model) is copied into it instead of into a fresh array per run.
    A fresh array above glibc's mmap threshold (`service/memory.py`; a batch of 8 at 384x384x3 int32
    is 14 MB) is a new memory mapping every time, and its pages fault in on every run. Not
    thread-safe: one per session."""

    def __init__(self, dtype: Any) -> None:
        self.dtype = dtype
        self._array: np.ndarray | None = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """`batch` as the model's dtype; valid until the next call."""
        if self.dtype is None or batch.dtype == self.dtype:
            return batch
        if self._array is None or self._array.shape != batch.shape:
            self._array = np.empty(batch.shape, self.dtype)
        np.copyto(self._array, batch, casting="unsafe")
        return self._array


class OrtModel:
    """One inference session. Not thread-safe by contract: one `OrtModel` per worker thread."""

    def __init__(
        self,
        path: Path,
        *,
        providers: Sequence[str] = ("cuda", "cpu"),
        intra_op_threads: int = 0,
        fp16: bool = False,
        allow_spinning: bool = True,
        graph: bytes | None = None,
    ) -> None:
        """`graph`: a serialized ONNX graph to run instead of the file's own (see `open_session`)."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        if not allow_spinning:  # idle intra-op threads sleep instead of busy-waiting for the next run
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.path = path
        self.session = ort.InferenceSession(
            graph if graph is not None else str(path),
            sess_options=options,
            providers=resolve_providers(providers, fp16=fp16, engine_cache=lambda: engine_cache_folder(path, graph)),
        )
        self.providers: list[str] = self.session.get_providers()
        inputs = self.session.get_inputs()
        self.input_name: str = inputs[0].name
        self.input_shape: list[int | str | None] = list(inputs[0].shape)
        self.input_dtype = _ORT_DTYPES.get(inputs[0].type)
        self._cast = CastBuffer(self.input_dtype)
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]
        logger.info("loaded %s with providers %s", path.name, self.providers)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one batch (N, ...) and return every output in `output_names` order.

        The batch is cast once to the model's input type, so rows can stay compact (uint8 pixels
        for an int32 model) until they are stacked.
        """
        outputs = self.session.run(self.output_names, {self.input_name: self._cast(batch)})
        return [np.asarray(o) for o in outputs]

    def run_inputs(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run a graph of several inputs: one batch (N, ...) per input, in the graph's input order."""
        names = [i.name for i in self.session.get_inputs()]
        if len(batches) != len(names):
            raise ValueError(f"{self.path.name} takes inputs {names}, got {len(batches)} arrays")
        outputs = self.session.run(self.output_names, dict(zip(names, batches, strict=True)))
        return [np.asarray(o) for o in outputs]
