"""``poseserve tune NAME``: measure, on this machine, every usable variant of a model at each batch
size and each split of the cores into sessions x threads; keep the best shape per variant.

Given an encoded image (the CLI always gives one), each shape is measured as it is served: a
server of its own (`poseserve serve`, this process's environment, the shape pinned), under the
closed-loop HTTP load of `poseserve bench http` from this process: images per second with enough
clients to fill every worker's batch twice, the median model time the answers report as the batch
time, and one client's median latency as a lone request's. Measured bare instead (sessions alone,
as the at-load tune does), shapes ranked differently from what the server then did: on 2 cores one
2-thread OpenVINO session ran 50.8 img/s bare against 53.5 for two 1-thread sessions, and 42 vs 46
served without HTTP (decoding, batching and post-processing in one process), yet 31-32 vs 38-39
req/s with it. A lone session idles while its worker post-processes, and its second thread stalls
whenever the event loop or the decode threads take a core; only the whole server shows how much.

A shape is eligible when a lone request (one client) is answered within the latency budget and
its median batch time under load stays within the batch bound (the backend's `max_queue_delay_ms`:
an image queued behind a longer batch would wait past it). Where no shape meets the budget (a CPU
too slow for it even alone), it becomes the shortest lone request measured plus
`throughput_tolerance` of it, and likewise the bound (`held_budget_ms`); tune says so. The budget is
not on the batch time: under load two sessions sharing the cores each take longer per batch than one
session using both, yet they answer more requests sooner at every load that keeps both busy and as
fast alone. On a 2-core AMD EPYC a 100 ms budget on the batch time kept OpenVINO fp32 in one 2-thread
session (93 ms batches, 73.6 ms alone) over two (122 ms, 76.2 ms alone), which then served 15.5
against 16.1 req/s at 8 clients and the same lone request (66.8 ms) in three alternated rounds.
The splits use every core once (2 cores: 1x2, 2x1) and also give each of several sessions every
core (2x2): whether a runtime tolerates that oversubscription only a measurement tells. Of the eligible shapes within
`throughput_tolerance` of a variant's highest throughput, those whose lone request is faster by
more than that fraction win (a server seldom runs at exactly full load), the highest throughput of
them kept; else the highest throughput is. The kept shape of each variant goes
to this machine's `MeasuredStore`, where backends loading later find it (explicit settings win
over it). Tests run it only to check what it keeps and records, never its figures, which are
timings.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from models import registry
from models.measured import MeasuredStore, machine_description
from models.runtime import Session
from models.runtimes import Precision, Runtime, variant_name
from models.weights import StoredModel, WeightsStore
from service.backends.sessions import load_sessions
from service.backends.single_stage import sparse_pipeline
from service.backends.variants import SHAPE_FIELDS, usable_variants
from service.bench import bench_http
from service.config import BackendSettings
from service.spawn import spawned_server

__all__ = [
    "AT_LOAD_SECONDS",
    "BareVariant",
    "TuneReport",
    "best_throughput",
    "core_splits",
    "held_budget_ms",
    "mark_eligible",
    "pick_shape",
    "tune",
    "tune_if_unmeasured",
]

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
    """The variant a backend would now serve by default (None when nothing was measured)."""
    budget_ms: float = 0.0
    """The lone request's median time shapes were held to: the budget asked for, or
    `held_budget_ms`'s relaxation where no shape met it."""
    batch_bound_ms: float = 0.0
    """The median batch time shapes were held to (likewise)."""


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


def best_throughput(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Of one variant's eligible rows, the one with the highest ``img_per_s`` (ties: the faster lone
    request); None when none is eligible."""
    return max((r for r in rows if r["eligible"]), key=lambda r: (r["img_per_s"], -r["alone_ms"]), default=None)


def held_budget_ms(rows: Sequence[dict[str, Any]], budget_ms: float, tolerance: float, key: str = "alone_ms") -> float:
    """The limit on the rows' `key` (a median time) shapes are held to: `budget_ms`, or where no
    shape met it (a CPU too slow for it even at batch 1) the shortest measured plus `tolerance` of
    it. Without it such a machine keeps nothing and serves the unmeasured defaults, slower on both
    counts (on a 2-core AMD EPYC fp32 ONNX Runtime at its default `max_batch` 8 ran 559 ms batches for
    13 img/s, against 113 ms and 17 img/s for two 1-thread sessions at batch 1)."""
    shortest = min((r[key] for r in rows), default=budget_ms)
    return budget_ms if shortest <= budget_ms else round(shortest * (1.0 + tolerance), 2)


def _queue_bound_ms(settings: BackendSettings) -> float:
    """The longest the backend lets an image wait (`max_queue_delay_ms`; 1 s where it sets none)."""
    return settings.max_queue_delay_ms if settings.max_queue_delay_ms is not None else 1000.0


def mark_eligible(
    rows: Sequence[dict[str, Any]], budget_ms: float, batch_bound_ms: float, tolerance: float
) -> tuple[float, float]:
    """Set each row's ``eligible``: a lone request within the budget and a batch within the bound,
    each held (`held_budget_ms`) where no row met it; the bound is held among the rows within the
    budget, so that some row is always eligible. Returns the (budget, bound) held to."""
    budget = held_budget_ms(rows, budget_ms, tolerance)
    fast_alone = [r for r in rows if r["alone_ms"] <= budget]
    bound = held_budget_ms(fast_alone, batch_bound_ms, tolerance, key="batch_p50_ms")
    for row in rows:
        row["eligible"] = row["alone_ms"] <= budget and row["batch_p50_ms"] <= bound
    return budget, bound


def pick_shape(rows: Sequence[dict[str, Any]], tolerance: float) -> dict[str, Any] | None:
    """Of one variant's eligible rows, the one with the highest ``img_per_s``, unless some within
    ``tolerance`` (a fraction) of that throughput answer a lone request faster by more than the same
    fraction: then the one of those with the highest throughput. A lone request a few percent
    faster is noise in these measurements, not a reason to give up throughput."""
    top = best_throughput(rows)
    if top is None:
        return None
    eligible = [r for r in rows if r["eligible"]]
    keep = 1.0 - tolerance
    faster = [
        r for r in eligible if r["img_per_s"] >= keep * top["img_per_s"] and r["alone_ms"] < keep * top["alone_ms"]
    ]
    return max(faster, key=lambda r: (r["img_per_s"], -r["alone_ms"])) if faster else top


def _measure(sessions: Sequence[Session], batch: np.ndarray, seconds: float) -> tuple[float, float]:
    """(images per second, median batch ms) of `sessions` each running `batch`, all at once."""
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


_NOT_MEASURED = ("POSESERVE_API_KEYS", "POSESERVE_API_KEY_FILE", "POSESERVE_REDIS_URL")
"""Settings of this process's environment the measuring server goes without: it answers its own
load (no keys) and runs the model itself (no Redis)."""


def _served(
    store: WeightsStore, name: str, settings: BackendSettings, shape: dict[str, Any], image: bytes, seconds: float
) -> tuple[float, float, float]:
    """(requests per second, median model ms, a lone request's median ms) of backend `name` served
    by a server of its own at `shape` (runtime, precision and the `SHAPE_FIELDS` over `settings`),
    started with this process's environment on `store`, less `_NOT_MEASURED`: see the module doc."""
    clients = max(8, 2 * shape["workers"] * shape["max_batch"])
    pinned = {**settings.model_dump(mode="json", exclude_unset=True), **shape}
    pinned["max_queue"] = max(settings.max_queue, clients)
    env = {
        "POSESERVE_MODEL_DIR": str(store.model_dir),
        "POSESERVE_PRELOAD": name,
        "POSESERVE_BACKENDS": json.dumps({name: pinned}),
        "POSESERVE_TUNE_AT_LOAD": "false",
        "POSESERVE_LOG_LEVEL": "warning",
    }
    with tempfile.TemporaryFile("w+") as log:
        try:
            with spawned_server(env, log=log, unset=_NOT_MEASURED) as (url, _):
                loaded, lone = bench_http(url, image, concurrency=(clients, 1), seconds=seconds, backend=name)
        except RuntimeError as exc:
            log.seek(0)
            raise RuntimeError(f"{name} at {shape}: {exc}: {log.read()[-2000:]}") from exc
    if not loaded["requests"] or not lone["requests"]:
        raise ValueError(f"{name} at {shape}: no image answered ({loaded['errors'] or lone['errors']})")
    return loaded["throughput_rps"], loaded["inference_p50_ms"], lone["latency_p50_ms"]


Measure = Callable[[Runtime, Precision, int, int, int], tuple[float, float, float]]
"""(runtime, precision, workers, threads, max_batch) -> (img/s, median batch ms, lone request ms)"""


def _served_measure(store: WeightsStore, name: str, settings: BackendSettings, image: bytes, seconds: float) -> Measure:
    def measure(
        runtime: Runtime, precision: Precision, workers: int, threads: int, size: int
    ) -> tuple[float, float, float]:
        shape = {"runtime": runtime, "precision": precision, "workers": workers}
        return _served(store, name, settings, shape | {"intra_op_threads": threads, "max_batch": size}, image, seconds)

    return measure


@dataclass(frozen=True)
class BareVariant:
    """A variant of single-stage model `name` as its backend runs it (the graph it cuts, its
    fp32 tail), outside any server, and an image as the variant's input row."""

    name: str
    stored: StoredModel
    settings: BackendSettings
    graph: bytes | None
    row: np.ndarray
    runtime: Runtime
    precision: Precision

    @classmethod
    def load(
        cls,
        store: WeightsStore,
        name: str,
        settings: BackendSettings,
        runtime: Runtime,
        precision: Precision,
        image_rgb: np.ndarray | None = None,
    ) -> BareVariant:
        """`image_rgb`: the image to run (default a blank 640 x 480 frame)."""
        stored = store.require(variant_name(name, runtime, precision))
        pipeline, graph = sparse_pipeline(registry.MODELS[name], stored, settings)
        image = image_rgb if image_rgb is not None else np.zeros((480, 640, 3), np.uint8)
        return cls(name, stored, settings, graph, pipeline.preprocess(image)[0], runtime, precision)

    def sessions(self, workers: int, threads: int, size: int) -> list[Session]:
        """The sessions a backend at this shape opens (static input at batch 1 included)."""
        shape = {"workers": workers, "intra_op_threads": threads, "max_batch": size, "providers": ("cpu",)}
        return load_sessions(
            self.stored.path,
            self.settings.model_copy(update=shape),
            self.name,
            spinning=True,
            runtime=self.runtime,
            precision=self.precision,
            row_shape=self.row.shape,
            graph=self.graph,
            fp32_from=self.stored.card.fp32_from,
        )

    def measure(self, sessions: Sequence[Session], size: int, seconds: float) -> tuple[float, float]:
        """`_measure` of `sessions` on batches of `size` copies of the image."""
        return _measure(sessions, np.stack([self.row] * size), seconds)


def _bare_measure(
    store: WeightsStore, name: str, settings: BackendSettings, image_rgb: np.ndarray | None, seconds: float
) -> Measure:
    alone_ms: dict[tuple[str, str, int], float] = {}  # a batch-1 request, one session alone, per variant x threads

    @functools.cache
    def variant(runtime: Runtime, precision: Precision) -> BareVariant:
        return BareVariant.load(store, name, settings, runtime, precision, image_rgb)

    def run(runtime: Runtime, precision: Precision, workers: int, threads: int, size: int) -> tuple[float, float]:
        bare = variant(runtime, precision)
        return bare.measure(bare.sessions(workers, threads, size), size, seconds)

    def measure(
        runtime: Runtime, precision: Precision, workers: int, threads: int, size: int
    ) -> tuple[float, float, float]:
        alone = (runtime, precision, threads)
        if alone not in alone_ms:
            alone_ms[alone] = run(runtime, precision, 1, threads, 1)[1]
        ips, p50_ms = run(runtime, precision, workers, threads, size)
        return ips, p50_ms, alone_ms[alone]

    return measure


def tune(
    store: WeightsStore,
    name: str,
    settings: BackendSettings,
    *,
    image_rgb: np.ndarray | None = None,
    served: bytes | None = None,
    batches: Sequence[int] = (1, 2, 4, 8),
    seconds: float = 1.5,
    latency_budget_ms: float = 100.0,
    batch_bound_ms: float | None = None,
    throughput_tolerance: float = 0.1,
    cores: int | None = None,
) -> TuneReport:
    """Measure model `name` (single-stage) per usable variant x core split x batch size; record the
    best eligible shape of each variant for this machine and return what was measured.

    `served` (an encoded image): each shape as served (`_served`); else (`image_rgb`, default a
    blank frame) bare sessions, as a backend tuning at load does. `batch_bound_ms` (default the
    backend's `max_queue_delay_ms`, else 1 s) bounds the median batch time (`mark_eligible`).
    """
    entry = registry.MODELS[name]
    if entry.kind != "single-stage":
        raise ValueError(f"{name} is {entry.kind}: tune measures single-stage models")
    base = store.require(name)
    measure = (
        _served_measure(store, name, settings, served, seconds)
        if served is not None
        else _bare_measure(store, name, settings, image_rgb, seconds)
    )
    cores = cores or int(machine_description()["cores"])
    if "max_batch" in settings.model_fields_set:
        batches = [settings.max_batch]
    measured = MeasuredStore(store.model_dir)
    rows: list[dict[str, Any]] = []
    best: dict[str, dict[str, Any]] = {}
    for runtime, precision in usable_variants(store, name, settings):
        key = f"{runtime}-{precision}"
        for workers, threads in core_splits(cores, settings):
            for size in batches:
                ips, p50_ms, alone_ms = measure(runtime, precision, workers, threads, size)
                result = {
                    "variant": key,
                    "workers": workers,
                    "intra_op_threads": threads,
                    "max_batch": size,
                    "img_per_s": round(ips, 2),
                    "batch_p50_ms": round(p50_ms, 2),
                    "alone_ms": round(alone_ms, 2),
                }
                rows.append(result)
                logger.info("%s", result)
    if batch_bound_ms is None:
        batch_bound_ms = _queue_bound_ms(settings)
    budget_ms, bound_ms = mark_eligible(rows, latency_budget_ms, batch_bound_ms, throughput_tolerance)
    for held, asked, what in (
        (budget_ms, latency_budget_ms, "answered a lone request"),
        (bound_ms, batch_bound_ms, "ran a batch"),
    ):
        if held > asked:
            logger.warning(
                "%s: no shape %s within %g ms here; holding shapes to %g ms (the shortest + %g%%)",
                name,
                what,
                asked,
                held,
                100 * throughput_tolerance,
            )
    for key in dict.fromkeys(r["variant"] for r in rows):
        if (picked := pick_shape([r for r in rows if r["variant"] == key], throughput_tolerance)) is not None:
            best[key] = picked
    when = datetime.now(UTC).isoformat(timespec="seconds")
    measured_as = "served" if served is not None else "sessions"
    for key, row_best in best.items():
        fields = ("img_per_s", "max_batch", "workers", "intra_op_threads", "batch_p50_ms", "alone_ms")
        figures = {k: row_best[k] for k in fields}
        measured.record(name, base.card.sha256, key, {**figures, "how": "tune", "measured": measured_as, "at": when})
    chosen = max(best, key=lambda k: best[k]["img_per_s"]) if best else None
    return TuneReport(rows=rows, best=best, chosen=chosen, budget_ms=budget_ms, batch_bound_ms=bound_ms)


def tune_if_unmeasured(store: WeightsStore, name: str, settings: BackendSettings) -> TuneReport | None:
    """`tune` single-stage model `name` briefly when nothing is measured for this copy of it on this
    machine, so that the backend about to load serves a measured shape (`Settings.tune_at_load`).

    None when it did not run: measurements exist, every shape field is set explicitly, the store is
    read-only (the result could not be kept), the machine has an NVIDIA GPU (`tune` measures CPU
    sessions), or the measurement failed (logged; the backend then loads with its settings). A
    shape is eligible when its batch time stays within the backend's `max_queue_delay_ms` and a
    lone image within it too (bare sessions: no request around the model).
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
    try:  # a lone image, like a batch, may take as long as the backend lets an image wait
        report = tune(store, name, settings, seconds=AT_LOAD_SECONDS, latency_budget_ms=_queue_bound_ms(settings))
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
