"""Which variant of a model a backend serves, and in what batch shape: explicit settings win, else
what measured fastest on this machine (`models.measured`, written by ``poseserve tune`` and
``poseserve models optimize``) among the variants within their AP budget, else fp32 ONNX Runtime.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

from models.errors import WeightsMissingError
from models.measured import MeasuredStore
from models.runtimes import Precision, Runtime, runtime_problem, variant_name
from models.weights import StoredModel, WeightsStore
from service.config import BackendSettings

__all__ = ["SHAPE_FIELDS", "Choice", "choose_variant", "usable_variants"]

logger = logging.getLogger(__name__)

SHAPE_FIELDS = ("max_batch", "workers", "intra_op_threads")
"""The batch-shape settings `poseserve tune` measures (explicit settings win over them)."""


@dataclass(frozen=True)
class Choice:
    """The variant to serve: its weights, runtime, precision, the settings to run it with, and why."""

    stored: StoredModel
    runtime: Runtime
    precision: Precision
    settings: BackendSettings
    reason: str


def _split(key: str) -> tuple[Runtime, Precision]:
    runtime, _, precision = key.rpartition("-")
    return cast(Runtime, runtime), cast(Precision, precision)


def usable_variants(store: WeightsStore, model: str, settings: BackendSettings) -> list[tuple[Runtime, Precision]]:
    """The (runtime, precision) pairs of `model` that can run here: fp32 on every installed runtime,
    and each stored variant made from this copy of the model whose AP loss stayed within its budget
    (forced ones only when asked for explicitly), filtered by explicit `runtime` / `precision`."""
    base = store.require(model)
    gpu = any(p in ("cuda", "tensorrt") for p in settings.providers)
    pairs: list[tuple[Runtime, Precision]] = []
    for runtime in ("onnxruntime", "openvino"):
        for precision in ("fp32", "bf16", "fp16", "int8"):
            pair = (cast(Runtime, runtime), cast(Precision, precision))
            if settings.runtime not in (None, runtime) or settings.precision not in (None, precision):
                continue
            if runtime_problem(*pair, gpu=gpu) is not None:
                continue
            if precision != "fp32":
                card = store.card(variant_name(model, *pair))
                if card is None or card.variant is None or card.variant.base_sha256 != base.card.sha256:
                    continue
                explicit = settings.precision is not None
                if not (card.variant.within_budget or explicit) or not store.available(variant_name(model, *pair)):
                    continue
            pairs.append(pair)
    return pairs


def _shape(settings: BackendSettings, figures: dict[str, Any]) -> tuple[BackendSettings, dict[str, Any]]:
    """`settings` with the measured batch shape for every field not set explicitly."""
    update = {k: figures[k] for k in SHAPE_FIELDS if k in figures and k not in settings.model_fields_set}
    if not update:
        return settings, {}
    merged = {**settings.model_dump(), **update}
    merged["max_queue"] = max(merged["max_queue"], merged["max_batch"])
    return BackendSettings.model_validate(merged), update


def choose_variant(store: WeightsStore, model: str, settings: BackendSettings) -> Choice:
    """The variant of `model` to serve with `settings` (see the module doc); `WeightsMissingError`
    says how to make an explicitly asked-for variant that is not in the store."""
    if settings.fp16 and settings.precision is None:  # the older switch means precision fp16, measured or not
        settings = settings.model_copy(update={"precision": "fp16"})
    base = store.require(model)
    measured = MeasuredStore(store.model_dir).variants(model, base.card.sha256)
    usable = usable_variants(store, model, settings)
    timed = [(measured[f"{r}-{p}"].get("img_per_s", 0.0), r, p) for r, p in usable if f"{r}-{p}" in measured]
    if timed:
        ips, runtime, precision = max(timed)
        reason = f"fastest measured here ({ips:.1f} img/s of {len(timed)} measured variants)"
    else:
        runtime = settings.runtime or "onnxruntime"
        precision = settings.precision or "fp32"
        reason = "as configured" if settings.runtime or settings.precision else "default (nothing measured here)"
    ort_fp16 = runtime == "onnxruntime" and precision == "fp16"  # the fp32 file, built as fp16 by TensorRT
    if (runtime, precision) not in usable and not ort_fp16:
        problem = runtime_problem(runtime, precision)
        if problem is not None:
            raise WeightsMissingError(f"{model} at {runtime} {precision}: {problem}")
        raise WeightsMissingError(
            f"{model} has no {runtime} {precision} variant within its AP budget in {store.model_dir}: run "
            f"`poseserve models optimize {model} --runtime {runtime} --precision {precision}`"
        )
    stored = base if precision == "fp32" or ort_fp16 else store.require(variant_name(model, runtime, precision))
    shaped, applied = _shape(settings, measured.get(f"{runtime}-{precision}", {}))
    if applied:
        reason += f"; measured batch shape {applied}"
    logger.info("%s: serving %s %s (%s)", model, runtime, precision, reason)
    return Choice(stored=stored, runtime=runtime, precision=precision, settings=shaped, reason=reason)
