"""Precision variants of a served model: build, score against fp32, install (``models optimize``).

A variant is a (runtime, precision) pair with its own ONNX file and card in the weights store
(`models.runtimes.variant_name`): int8 is a new graph (ONNX Runtime static quantization, QDQ,
per-channel weights, activations calibrated on real frames); bf16 / fp16 are the fp32 graph run at
that precision by its runtime. Every variant is scored by keypoint AP (pycocotools) on real photos
against the fp32 model under ONNX Runtime, and refused when it loses more than ``max_ap_drop``
unless forced; its batch-1 throughput beside fp32's (one process, side by side) goes to this
machine's `MeasuredStore`. Single-stage models only (a crop model's AP needs the whole cascade).

Needs the ``eval`` extra (pycocotools), ``onnx`` for int8 and the ``openvino`` extra for OpenVINO
variants; never imported by serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from models import registry
from models.card import ModelCard, VariantInfo
from models.errors import OptimizeError
from models.evaluation import coco_keypoint_results, evaluate_keypoints
from models.measured import MeasuredStore, cpu_has_int8_dot
from models.pipelines import build
from models.pipelines.base import SingleStage
from models.runtime import Session
from models.runtimes import RUNTIMES, Precision, Runtime, open_session, runtime_problem, variant_name
from models.weights import StoredModel, WeightsStore

__all__ = [
    "DEFAULT_MAX_AP_DROP",
    "OptimizeResult",
    "calibration_frames",
    "cpu_variants",
    "keypoint_ap",
    "optimize",
    "quantize_int8",
    "throughput_batch1",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_AP_DROP = 0.01
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
_VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm"}


@dataclass(frozen=True)
class OptimizeResult:
    card: ModelCard
    installed: bool
    """False when the variant lost too much AP and was not forced (nothing written)."""
    fp32_img_per_s: float
    img_per_s: float


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, EXIF orientation applied (as the service decodes)."""
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


@dataclass(frozen=True)
class _Photos:
    """A COCO keypoint folder decoded once: its annotations and each photo as `pipeline`'s input,
    to score any number of sessions on."""

    pipeline: SingleStage
    coco: dict[str, Any]
    rows: list[tuple[int, np.ndarray, Any]]
    """(image id, model input row, geometry) per photo"""

    @classmethod
    def load(cls, pipeline: SingleStage, samples: Path) -> _Photos:
        coco = json.loads((samples / "person_keypoints.json").read_text())
        rows = []
        for image in coco["images"]:
            row, geometry = pipeline.preprocess(read_rgb(samples / image["file_name"]))
            rows.append((image["id"], row, geometry))
        return cls(pipeline, coco, rows)

    def ap(self, session: Session) -> dict[str, float]:
        """COCO keypoint AP/AR of `session` (every person the model answers, as ``/v1/pose?min_score=0``)."""
        results: list[dict[str, Any]] = []
        for image_id, row, geometry in self.rows:
            persons = self.pipeline.postprocess([o[0] for o in session.run(row[None])], geometry)
            if len(persons.scores):
                results += coco_keypoint_results(image_id, persons.keypoints, persons.scores)
        return evaluate_keypoints(self.coco, results)


def keypoint_ap(session: Session, pipeline: SingleStage, samples: Path) -> dict[str, float]:
    """COCO keypoint AP/AR of `session` on ``samples/person_keypoints.json`` + its images (every
    person the model answers, as ``/v1/pose?min_score=0``)."""
    return _Photos.load(pipeline, samples).ap(session)


def _bf16_tail(
    path: Path, photos: _Photos, fp32_ap: float, max_ap_drop: float
) -> tuple[Session, dict[str, float], str | None]:
    """OpenVINO bf16 with the shortest fp32 tail that keeps the AP on `photos` within `max_ap_drop`
    of `fp32_ap`: each place `fp32_cuts` offers, latest first, until one does; else the one that
    lost least. (session, its AP stats, the tensor the tail starts after; None: no cut, all bf16)."""
    from models.runtimes.openvino import fp32_cut_names

    best: tuple[Session, dict[str, float], str | None] | None = None
    names: list[str | None] = [*fp32_cut_names(path)] or [None]
    for name in names:
        session = open_session(path, runtime="openvino", precision="bf16", providers=("cpu",), fp32_from=name)
        stats = photos.ap(session)
        logger.info("bf16, fp32 after %s: AP %.4f (fp32 %.4f)", name, stats["AP"], fp32_ap)
        if best is None or stats["AP"] > best[1]["AP"]:
            best = (session, stats, name)
        if stats["AP"] - fp32_ap >= -max_ap_drop:
            return session, stats, name
    assert best is not None
    return best


def _video_frames(path: Path, count: int) -> Iterator[np.ndarray]:
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or count
        for index in np.linspace(0, max(total - 1, 0), count).astype(int):
            capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
            ok, bgr = capture.read()
            if ok:
                yield bgr[:, :, ::-1].copy()
    finally:
        capture.release()


def calibration_frames(
    sources: Sequence[Path], *, per_video: int = 8, max_images: int = 32
) -> tuple[list[np.ndarray], list[str]]:
    """Real RGB frames from `sources` (folders of photos, video files, or folders of videos) and
    where each came from (``file`` or ``file#frame-k``). Videos give `per_video` evenly spaced
    frames; folders give at most `max_images` photos, evenly spaced by name."""
    frames: list[np.ndarray] = []
    names: list[str] = []
    for source in sources:
        files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
        photos = [p for p in files if p.suffix.lower() in _IMAGE_SUFFIXES]
        step = max(1, len(photos) // max_images)
        for photo in photos[::step][:max_images]:
            frames.append(read_rgb(photo))
            names.append(str(photo))
        for video in (p for p in files if p.suffix.lower() in _VIDEO_SUFFIXES):
            for k, frame in enumerate(_video_frames(video, per_video)):
                frames.append(frame)
                names.append(f"{video}#frame-{k}")
    if not frames:
        raise OptimizeError(f"no calibration frames in {', '.join(map(str, sources)) or 'no sources'}")
    return frames, names


def quantize_int8(src: Path, dst: Path, rows: Sequence[np.ndarray], *, reduce_range: bool) -> None:
    """Static int8 quantization of `src` into `dst`: QDQ, per-channel int8 weights, uint8
    activations with ranges from `rows` (model input rows, no batch axis). Only convolutions are
    quantized; the graph's outputs keep fp32 heads (their convolutions stay fp32).

    `reduce_range` quantizes weights to 7 bits, for CPUs without an int8 dot-product instruction
    (`cpu_has_int8_dot`), whose kernels otherwise saturate 16-bit sums of products: on a 2-core AMD
    EPYC (AVX2) movenet-multipose's pose_samples AP was 0.0004 with 8-bit weights and 0.1661 with 7
    (fp32: 0.2776), at the same speed."""
    try:
        import onnx
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise OptimizeError(f"int8 quantization needs onnx and onnxruntime.quantization: {exc}") from exc

    graph = onnx.load(str(src)).graph
    input_name, outputs = graph.input[0].name, {o.name for o in graph.output}
    input_dtype = onnx.helper.tensor_dtype_to_np_dtype(graph.input[0].type.tensor_type.elem_type)
    heads = [n.name for n in graph.node if n.op_type == "Conv" and outputs & set(n.output)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._rows = iter(rows)

        def get_next(self) -> dict[str, np.ndarray] | None:
            row = next(self._rows, None)
            return None if row is None else {input_name: row[None].astype(input_dtype)}

    with tempfile.TemporaryDirectory(prefix="poseserve-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=heads,
            reduce_range=reduce_range,
        )


def throughput_batch1(session: Session, row: np.ndarray, seconds: float) -> float:
    """Images per second of `session` at batch 1 on `row`, over at least `seconds`."""
    x = row[None]
    session.run(x)
    runs, started = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - started < seconds:
        session.run(x)
        runs += 1
    return runs / (time.perf_counter() - started)


def cpu_variants(*, calibrated: bool) -> list[tuple[Runtime, Precision]]:
    """The (runtime, precision) variants this machine's CPU and installed runtimes can make and run,
    fp32 aside: bf16 / fp16 only where OpenVINO finds the CPU instructions for them (AVX512-BF16 or
    AMX; AMX-FP16), int8 on both runtimes when `calibrated` (it needs calibration frames)."""
    precisions: tuple[Precision, ...] = ("bf16", "fp16", "int8") if calibrated else ("bf16", "fp16")
    return [
        (runtime, precision)
        for runtime in RUNTIMES
        for precision in precisions
        if runtime_problem(runtime, precision) is None
    ]


def _pipeline(stored: StoredModel) -> SingleStage:
    entry = registry.MODELS[stored.card.name]
    if entry.kind != "single-stage":
        raise OptimizeError(f"{entry.name} is {entry.kind}: only single-stage models can be scored alone")
    return build.single_stage(entry, stored.card)


def optimize(
    store: WeightsStore,
    name: str,
    *,
    runtime: Runtime,
    precision: Precision,
    samples: Path,
    calibration: Sequence[Path] = (),
    max_ap_drop: float = DEFAULT_MAX_AP_DROP,
    force: bool = False,
    seconds: float = 3.0,
) -> OptimizeResult:
    """Build the (`runtime`, `precision`) variant of model `name`, score it against fp32 on the COCO
    keypoint photos in `samples`, and install it unless it loses more than `max_ap_drop` AP (or
    `force`). int8 calibrates on `calibration` (photos, videos). Raises `OptimizeError`."""
    if precision == "fp32":
        raise OptimizeError("fp32 is the model itself; choose bf16, fp16 or int8")
    problem = runtime_problem(runtime, precision)
    if problem is not None:
        raise OptimizeError(problem)
    base = store.require(name)
    pipeline = _pipeline(base)
    if not (samples / "person_keypoints.json").is_file():
        raise OptimizeError(f"no person_keypoints.json in {samples}")

    calibration_info: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="poseserve-optimize-") as tmp:
        path = Path(tmp) / "variant.onnx"
        if precision == "int8":
            frames, sources = calibration_frames(calibration)
            samples_resolved = samples.resolve()
            if any(Path(s.split("#")[0]).resolve().is_relative_to(samples_resolved) for s in sources):
                logger.warning("calibration frames overlap the AP photos in %s: the AP delta is optimistic", samples)
            reduce_range = not cpu_has_int8_dot()
            quantize_int8(base.path, path, [pipeline.preprocess(f)[0] for f in frames], reduce_range=reduce_range)
            calibration_info = {
                "frames": len(frames),
                "sources": sources,
                "method": "minmax",
                "weight_bits": 7 if reduce_range else 8,
            }
        else:
            path.write_bytes(base.path.read_bytes())
        onnx_bytes = path.read_bytes()
        fp32 = open_session(base.path, providers=("cpu",))
        photos = _Photos.load(pipeline, samples)
        fp32_stats = photos.ap(fp32)
        fp32_from: str | None = None
        if runtime == "openvino" and precision == "bf16":
            variant, stats, fp32_from = _bf16_tail(path, photos, fp32_stats["AP"], max_ap_drop)
        else:
            variant = open_session(path, runtime=runtime, precision=precision, providers=("cpu",))
            stats = photos.ap(variant)
        row = pipeline.preprocess(read_rgb(sorted((samples / "images").rglob("*.jpg"))[0]))[0]
        fp32_ips = throughput_batch1(fp32, row, seconds)
        ips = throughput_batch1(variant, row, seconds)
        del fp32, variant

    ap_delta = stats["AP"] - fp32_stats["AP"]
    accuracy = {
        "dataset": str(samples),
        "images": len(photos.rows),
        "fp32_ap": round(fp32_stats["AP"], 4),
        "ap": round(stats["AP"], 4),
        "ap_delta": round(ap_delta, 4),
        "max_ap_drop": max_ap_drop,
        "forced": bool(force and ap_delta < -max_ap_drop),
    }
    vname = variant_name(name, runtime, precision)
    card = base.card.model_copy(
        update={
            "name": vname,
            "file": f"{vname}.onnx",
            "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "bytes": len(onnx_bytes),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "variant": VariantInfo(
                base=name,
                base_sha256=base.card.sha256,
                runtime=runtime,
                precision=precision,
                calibration=calibration_info,
                accuracy=accuracy,
                fp32_from=fp32_from,
            ),
        }
    )
    installed = ap_delta >= -max_ap_drop or force
    if installed:
        store.install(vname, onnx_bytes, card)
        measured = MeasuredStore(store.model_dir)
        when = datetime.now(UTC).isoformat(timespec="seconds")
        for key, value in (("onnxruntime-fp32", fp32_ips), (f"{runtime}-{precision}", ips)):
            known = measured.variants(name, base.card.sha256).get(key, {})
            if known.get("how") != "tune":  # a tuned figure (best batch shape) is better than batch 1
                measured.record(
                    name, base.card.sha256, key, {"img_per_s": round(value, 2), "how": "optimize", "at": when}
                )
    return OptimizeResult(card=card, installed=installed, fp32_img_per_s=fp32_ips, img_per_s=ips)
