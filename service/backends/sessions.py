"""Inference sessions of one backend stage: loading, warm-up, one batched run."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from models.runtime import Session
from models.runtimes import Precision, Runtime, open_session
from service.config import BackendSettings
from service.errors import BackendUnavailableError
from service.priority import run_lowered

__all__ = ["load_sessions", "run_rows", "warm_up"]

T = TypeVar("T")


def load_sessions(
    path: Path,
    settings: BackendSettings,
    backend: str,
    *,
    spinning: bool,
    runtime: Runtime | None = None,
    precision: Precision = "fp32",
    row_shape: tuple[int, ...] | None = None,
    graph: bytes | None = None,
    fp32_from: str | None = None,
) -> list[Session]:
    """`settings.workers` sessions of the ONNX file at `path` (one per worker thread), on `runtime`
    (None: `settings.runtime`, else ONNX Runtime) at `precision` (`settings.fp16`: fp16).

    `spinning` is the default for idle ORT threads busy-waiting, unless `settings.ort_spinning`
    says otherwise. `row_shape` (one input row, the batch axis left out) with `max_batch` 1: the
    runtime may compile for exactly that input (`open_session`'s `static_input`). `graph`: a graph
    derived from the file to run instead (`open_session`); `fp32_from`: where an OpenVINO bf16
    graph turns fp32 (its variant card's). The sessions' threads run `settings.worker_nice` levels
    below the caller. A file that cannot be loaded raises `BackendUnavailableError`.
    """
    if settings.ort_spinning is not None:
        spinning = settings.ort_spinning

    def create() -> list[Session]:
        return [
            open_session(
                path,
                runtime=runtime or settings.runtime or "onnxruntime",
                precision="fp16" if settings.fp16 else precision,
                providers=settings.providers,
                intra_op_threads=settings.intra_op_threads,
                allow_spinning=spinning,
                static_input=(1, *row_shape) if row_shape is not None and settings.max_batch == 1 else None,
                graph=graph,
                fp32_from=fp32_from,
            )
            for _ in range(settings.workers)
        ]

    try:
        return run_lowered(create, settings.worker_nice)  # the runtime's own threads inherit the priority
    except Exception as exc:  # a corrupt or incompatible file must not take the service down
        raise BackendUnavailableError(f"backend {backend}: cannot load {path}: {exc}") from exc


def run_rows(
    session: Session, rows: Sequence[np.ndarray], post: Callable[[list[np.ndarray], int], T]
) -> tuple[list[T], float]:
    """Stack rows, run the session once, post-process each row's slice: (outputs, model seconds)."""
    started = time.perf_counter()
    outputs = session.run(np.stack(rows))
    inference_s = time.perf_counter() - started
    return [post([o[i] for o in outputs], i) for i in range(len(rows))], inference_s


def warm_up(sessions: Sequence[Session], row: np.ndarray, max_batch: int) -> dict[int, float]:
    """Runs before serving: {batch size: seconds} of one timed batch of 1 and of `max_batch` rows.

    Each session first runs its largest batch, so the runtime takes the memory of the largest
    batch now rather than under load (a fresh server's RSS jumped by ~130 MB minutes into a soak,
    the first time a full batch ran), and the first requests do not pay for first runs. The timed
    runs seed the stage's batch-time estimates (admission control).
    """
    full = np.stack([row] * max_batch)
    for session in sessions:
        session.run(full)
    seconds: dict[int, float] = {}
    for size in sorted({1, max_batch}):
        started = time.perf_counter()
        sessions[0].run(full[:size])
        seconds[size] = time.perf_counter() - started
    return seconds
