"""``poseserve tune NAME``: measure, on this machine, every usable variant of a model at each batch
size and each split of the cores into sessions x threads; keep the best shape per variant.

Throughput is images per second with `workers` sessions running at once (as the engine runs them),
each on `max_batch`-row batches; a shape whose median batch time exceeds the latency budget is not
eligible. The splits use every core once (2 cores: 1x2, 2x1) and also give each of several sessions
every core (2x2): whether a runtime tolerates that oversubscription only a measurement tells. A lone
request's latency (batch 1, one session alone, per thread count) is measured beside them. Of the
eligible shapes within `throughput_tolerance` of a variant's highest throughput, the one with the
lowest lone-request latency is kept: a server seldom runs at exactly full load, and the decode
threads and event loop that serving adds beside the model shrink raw differences in throughput.
The kept shape of each variant goes to this machine's `MeasuredStore`, where backends loading later
find it (explicit settings win over it). Tests run it only to check what it keeps and records,
never its figures, which are timings.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from models import registry
from models.measured import MeasuredStore, machine_description
from models.pipelines import build
from models.pipelines.base import PipelineOptions
from models.runtimes import Precision, Runtime, open_session, variant_name
from models.weights import WeightsStore
from service.backends.variants import SHAPE_FIELDS, usable_variants
from service.config import BackendSettings

__all__ = ["AT_LOAD_SECONDS", "TuneReport", "core_splits", "pick_shape", "tune", "tune_if_unmeasured"]

logger = logging.getLogger(__name__)

AT_LOAD_SECONDS = 0.4
"""Seconds per measurement when a backend tunes itself at load (`tune_if_unmeasured`)."""


@dataclass(frozen=True)
class TuneReport:
    rows: list[dict[str, Any]]
    """One per (variant, workers, threads, batch): img_per_s, batch_p50_ms, eligible."""
    best: dict[str, dict[str, Any]]
    """Per variant key (``RUNTIME-PRECISION``): its kept row (`pick_shape`)."""
    chosen: str | None
    """The variant a backend would now serve by default (None when nothing was eligible)."""


def core_splits(cores: int, settings: BackendSettings) -> list[tuple[int, int]]:
    """(sessions, threads each): every split that uses every core once, and each session count
    above one with every session free to use all cores; explicit `workers` / `intra_op_threads` win."""
    divisors = [w for w in range(1, cores + 1) if cores % w == 0]
    splits = [(w, cores // w) for w in divisors] + [(w, cores) for w in divisors if w > 1]
    if "workers" in settings.model_fields_set:
        splits = [(w, t) for w, t in splits if w == settings.workers] or [
            (settings.workers, max(1, cores // settings.workers))
        ]
    if "intra_op_threads" in settings.model_fields_set:
        splits = [(w, settings.intra_op_threads) for w, _ in splits]
    return sorted(set(splits))


def pick_shape(rows: Sequence[dict[str, Any]], tolerance: float) -> dict[str, Any] | None:
    """Of one variant's eligible rows, the one with the lowest ``alone_ms`` among those within
    ``tolerance`` (a fraction) of the highest ``img_per_s``; ties go to throughput."""
    eligible = [r for r in rows if r["eligible"]]
    if not eligible:
        return None
    top = max(r["img_per_s"] for r in eligible)
    close = [r for r in eligible if r["img_per_s"] >= (1.0 - tolerance) * top]
    return min(close, key=lambda r: (r["alone_ms"], -r["img_per_s"]))


def _measure(
    path: Any, runtime: Runtime, precision: Precision, workers: int, threads: int, batch: np.ndarray, seconds: float
) -> tuple[float, float]:
    """(images per second, median batch ms) of `workers` sessions running `batch` at once."""
    sessions = [
        open_session(path, runtime=runtime, precision=precision, providers=("cpu",), intra_op_threads=threads)
        for _ in range(workers)
    ]
    for session in sessions:
        session.run(batch)
    times: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def loop(session: Any) -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            session.run(batch)
            with lock:
                times.append(time.perf_counter() - started)

    began = time.perf_counter()
    pool = [threading.Thread(target=loop, args=(s,)) for s in sessions]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - began
    return len(times) * len(batch) / elapsed, statistics.median(times) * 1000


def tune(
    store: WeightsStore,
    name: str,
    settings: BackendSettings,
    *,
    image_rgb: np.ndarray | None = None,
    batches: Sequence[int] = (1, 2, 4, 8),
    seconds: float = 1.5,
    latency_budget_ms: float = 100.0,
    throughput_tolerance: float = 0.1,
    cores: int | None = None,
) -> TuneReport:
    """Measure model `name` (single-stage) per usable variant x core split x batch size; record the
    best eligible shape of each variant for this machine and return what was measured."""
    entry = registry.MODELS[name]
    if entry.kind != "single-stage":
        raise ValueError(f"{name} is {entry.kind}: tune measures single-stage models")
    base = store.require(name)
    pipeline = build.single_stage(entry, base.card, PipelineOptions(input_size=settings.input_size))
    image = image_rgb if image_rgb is not None else np.zeros((480, 640, 3), np.uint8)
    row = pipeline.preprocess(image)[0]
    cores = cores or int(machine_description()["cores"])
    if "max_batch" in settings.model_fields_set:
        batches = [settings.max_batch]
    measured = MeasuredStore(store.model_dir)
    rows: list[dict[str, Any]] = []
    best: dict[str, dict[str, Any]] = {}
    for runtime, precision in usable_variants(store, name, settings):
        key = f"{runtime}-{precision}"
        path = store.require(variant_name(name, runtime, precision)).path
        splits = core_splits(cores, settings)
        alone_ms = {  # one batch-1 request, one session alone
            t: round(_measure(path, runtime, precision, 1, t, row[None], seconds)[1], 2)
            for t in sorted({t for _, t in splits})
        }
        variant_rows = []
        for workers, threads in splits:
            for size in batches:
                ips, p50_ms = _measure(path, runtime, precision, workers, threads, np.stack([row] * size), seconds)
                result = {
                    "variant": key,
                    "workers": workers,
                    "intra_op_threads": threads,
                    "max_batch": size,
                    "img_per_s": round(ips, 2),
                    "batch_p50_ms": round(p50_ms, 2),
                    "alone_ms": alone_ms[threads],
                    "eligible": p50_ms <= latency_budget_ms,
                }
                variant_rows.append(result)
                logger.info("%s", result)
        rows += variant_rows
        if (picked := pick_shape(variant_rows, throughput_tolerance)) is not None:
            best[key] = picked
    when = datetime.now(UTC).isoformat(timespec="seconds")
    for key, row_best in best.items():
        fields = ("img_per_s", "max_batch", "workers", "intra_op_threads", "batch_p50_ms", "alone_ms")
        figures = {k: row_best[k] for k in fields}
        measured.record(name, base.card.sha256, key, {**figures, "how": "tune", "at": when})
    chosen = max(best, key=lambda k: best[k]["img_per_s"]) if best else None
    return TuneReport(rows=rows, best=best, chosen=chosen)


def tune_if_unmeasured(store: WeightsStore, name: str, settings: BackendSettings) -> TuneReport | None:
    """`tune` single-stage model `name` briefly when nothing is measured for this copy of it on this
    machine, so that the backend about to load serves a measured shape (`Settings.tune_at_load`).

    None when it did not run: measurements exist, every shape field is set explicitly, the store is
    read-only (the result could not be kept), the machine has an NVIDIA GPU (`tune` measures CPU
    sessions), or the measurement failed (logged; the backend then loads with its settings). A
    shape is eligible when its batch time stays within the backend's `max_queue_delay_ms`.
    """
    if all(f in settings.model_fields_set for f in SHAPE_FIELDS):
        return None
    base = store.require(name)
    if MeasuredStore(store.model_dir).variants(name, base.card.sha256):
        return None
    if machine_description()["nvidia"]:
        return None
    if not os.access(store.model_dir, os.W_OK):
        logger.info(
            "%s: nothing measured here and %s is read-only; run `poseserve tune %s`", name, store.model_dir, name
        )
        return None
    started = time.monotonic()
    # a batch may take as long as the backend lets an image wait: its own bound, not the CLI's default
    budget_ms = settings.max_queue_delay_ms if settings.max_queue_delay_ms is not None else 1000.0
    try:
        report = tune(store, name, settings, seconds=AT_LOAD_SECONDS, latency_budget_ms=budget_ms)
    except Exception:  # a measurement must never keep the backend from loading
        logger.exception("%s: tuning at load failed; loading with the configured shape", name)
        return None
    for key, row in report.best.items():
        logger.info(
            "%s: tuned at load in %.1f s: %s at max_batch=%d workers=%d intra_op_threads=%d (%.1f img/s)",
            name, time.monotonic() - started, key, row["max_batch"], row["workers"], row["intra_op_threads"],
            row["img_per_s"],
        )  # fmt: skip
    return report
