"""Build one pullable model: TF.js graph -> served ONNX (dynamic batch) + parity figures.

Called by ``WeightsStore.pull`` only (convert extra). Every failure is a ``PullError`` naming the
step; a model whose parity figures exceed the tolerances below is refused.

Tolerances, and why:
* codec vs graph, keypoint / box positions 1e-2 input pixels: float32 spacing at 384 px is 3e-5
  and the measured figures are <= 3.1e-5 px (the graph's normalise-by-(4/H) round trip); any
  decoding slip (a cell = 4 px, a missing offset, a half-pixel shift) is >= 0.1 px.
* codec vs graph, scores 1e-5: numpy's and onnxruntime's sigmoid/exp differ by a few ulps
  (measured <= 1.8e-7); a wrong threshold, weighting or mean moves scores by >= 1e-3.
* raw outputs vs graph and batch-of-8 vs singles 1e-4 (absolute): the same convolutions on the
  same inputs; measured 0.0 for MoveNet MultiPose. Kernel choices that depend on batch size may
  reorder float sums (~1e-6 relative); batch leakage or a pinned reshape gives O(1) differences.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from models.convert import graph, parity
from models.convert.spec import PullSpec
from models.convert.tfjs import DEFAULT_OPSET, converter_versions, tfjs_to_onnx
from models.errors import PullError

__all__ = ["BATCH_TOLERANCE", "CODEC_TOLERANCES", "RAW_TOLERANCE", "BuildResult", "build"]

logger = logging.getLogger(__name__)

CODEC_TOLERANCES = {"kpt_xy_px": 1e-2, "kpt_score": 1e-5, "box_xyxy_px": 1e-2, "person_score": 1e-5}
RAW_TOLERANCE = 1e-4
BATCH_TOLERANCE = 1e-4
PARITY_BATCH = 8
N_SYNTHETIC_IMAGES = 8


@dataclass(frozen=True)
class BuildResult:
    """The served model's bytes and what its card says about it."""

    onnx_bytes: bytes
    outputs: list[dict[str, Any]]
    parity: dict[str, Any]
    converter: dict[str, Any]


def build(name: str, spec: PullSpec, model_json: Path, image_paths: Sequence[Path]) -> BuildResult:
    """Convert ``model_json`` (shards beside it), make it servable, check it; raises PullError."""
    try:
        full = tfjs_to_onnx(model_json, opset=DEFAULT_OPSET)
    except Exception as exc:  # tf2onnx raises anything from ValueError to its own asserts
        raise PullError(f"tf2onnx could not convert {spec.model_file}: {exc!r}") from exc
    served, reference_names = _servable(name, spec, full)
    try:
        images = parity.load_images_rgb(image_paths) or parity.synthetic_images(N_SYNTHETIC_IMAGES)
    except ValueError as exc:
        raise PullError(str(exc)) from exc
    served_bytes = served.SerializeToString()
    try:
        reference = parity.session(full.SerializeToString())
        served_sess = parity.session(served_bytes)
        figures = _parity(name, spec, reference, served_sess, images, reference_names)
        outputs = _output_shapes(served_sess, spec)
    except PullError:
        raise
    except Exception as exc:  # onnxruntime load/run failures, shape errors
        raise PullError(f"parity run of {name} failed: {exc!r}") from exc
    figures["images"] = [{"file": p.name, "sha256": _sha256(p)} for p in image_paths]
    figures["synthetic_images"] = 0 if image_paths else N_SYNTHETIC_IMAGES
    return BuildResult(
        onnx_bytes=served_bytes,
        outputs=outputs,
        parity=figures,
        converter={**converter_versions(), "onnxruntime": ort.__version__, "opset": DEFAULT_OPSET},
    )


def _servable(name: str, spec: PullSpec, full: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Cut at the raw heads (dynamic N, H, W) or free the batch dim of the whole graph.

    Returns the served model and, per served output, the full graph's name of that tensor.
    """
    dims = {0: "N", 1: "H", 2: "W"} if spec.input.size_multiple and spec.input.layout == "NHWC" else None
    if spec.input.size_multiple and spec.input.layout == "NCHW":
        dims = {0: "N", 2: "H", 3: "W"}
    try:
        if not spec.heads:
            return graph.make_batch_dynamic(full, dims), [o.name for o in full.graph.output]
        tensors = [graph.find_output(full, head.prefix, head.op) for head in spec.heads]
        rename = {t: head.name for t, head in zip(tensors, spec.heads, strict=True)}
        return graph.cut_at_outputs(full, tensors, input_dims=dims, rename=rename), tensors
    except (KeyError, ValueError, onnx.checker.ValidationError) as exc:
        raise PullError(f"cannot make {name} servable with a dynamic batch: {exc}") from exc


def _parity(
    name: str,
    spec: PullSpec,
    reference: ort.InferenceSession,
    served: ort.InferenceSession,
    images: list[np.ndarray],
    reference_names: list[str],
) -> dict[str, Any]:
    sizes = spec.parity_sizes_hw or (spec.input.size_hw,)
    if spec.parity == "movenet-multipose":
        vs_ref = parity.movenet_multipose_vs_reference(reference, served, images, sizes, spec.input)
        tolerances: dict[str, float] = dict(CODEC_TOLERANCES)
        what = "served heads + numpy codec vs the full converted graph's in-graph decoding (output_0)"
    elif spec.parity == "movenet-singlepose":
        vs_ref = parity.movenet_singlepose_vs_reference(reference, served, images, sizes, spec.input)
        tolerances = {k: CODEC_TOLERANCES[k] for k in ("kpt_xy_px", "kpt_score")}
        what = "served heads + numpy codec vs the full converted graph's in-graph decoding (1, 1, 17, 3)"
    else:
        vs_ref = parity.raw_outputs_vs_reference(reference, served, images, sizes, spec.input, reference_names)
        tolerances = dict.fromkeys(vs_ref, RAW_TOLERANCE)
        what = "served graph vs the full converted graph, raw outputs at batch 1"
    batch = parity.batch_vs_singles(served, images, spec.input.size_hw, spec.input, batch=PARITY_BATCH)
    exceeded = [f"{k}={vs_ref[k]:.3g} > {tol:g}" for k, tol in tolerances.items() if vs_ref[k] > tol]
    exceeded += [f"batch {k}={v:.3g} > {BATCH_TOLERANCE:g}" for k, v in batch.items() if v > BATCH_TOLERANCE]
    if exceeded:
        raise PullError(f"{name} failed its parity checks: {'; '.join(exceeded)}")
    return {
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "served_vs_reference": {
            "compared": what,
            "sizes_hw": [list(s) for s in sizes],
            "max_abs_diff": vs_ref,
        },
        "served_vs_reference_tolerance": tolerances,
        "batch_vs_singles": {
            "batch": PARITY_BATCH,
            "size_hw": list(spec.input.size_hw),
            "max_abs_diff": batch,
            "tolerance": BATCH_TOLERANCE,
        },
    }


def _output_shapes(served: ort.InferenceSession, spec: PullSpec) -> list[dict[str, Any]]:
    """Output names in graph (= codec) order, with their shapes for one default-size image."""
    h, w = spec.input.size_hw
    shape = (1, h, w, 3) if spec.input.layout == "NHWC" else (1, 3, h, w)
    outs = served.run(None, {served.get_inputs()[0].name: np.zeros(shape, spec.input.dtype)})
    return [
        {"name": o.name, "shape_at_default_size": list(a.shape), "dtype": str(a.dtype)}
        for o, a in zip(served.get_outputs(), outs, strict=True)
    ]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
