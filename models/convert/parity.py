"""Parity checks run by ``WeightsStore.pull`` before a converted model may be served.

Two questions, each answered with max abs differences on real images (onnxruntime, CPU):

* served vs reference: does the served graph (cut / batch-fixed) plus its codec give what the full
  converted graph gives? For MoveNet MultiPose that compares the numpy codec with the graph's own
  decoding (``output_0``); for graphs without in-graph decoding, the raw outputs.
* batch vs singles: does one batch of 8 equal 8 single-image runs (per output)?

numpy, onnxruntime and OpenCV only (no TensorFlow): these run on the converted bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from models.card import InputSpec
from models.codecs import movenet

__all__ = [
    "batch_vs_singles",
    "letterbox",
    "load_images_rgb",
    "max_abs_diff",
    "movenet_multipose_vs_reference",
    "movenet_singlepose_vs_reference",
    "raw_outputs_vs_reference",
    "session",
    "synthetic_images",
    "to_tensor",
]

logger = logging.getLogger(__name__)

# Keypoint positions are compared where the reference's keypoint score is at least this: below it
# the weighted heatmap has underflowed to ~1e-20 and its argmax depends on ulps of exp().
KPT_SCORE_FLOOR = 1e-3


def load_images_rgb(paths: Sequence[Path]) -> list[np.ndarray]:
    """Read images as (H, W, 3) uint8 RGB; ``ValueError`` names any file OpenCV cannot decode."""
    images = []
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot read parity image {path}")
        images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return images


def synthetic_images(n: int, *, seed: int = 0, size: int = 480) -> list[np.ndarray]:
    """``n`` smooth random (size, size, 3) uint8 images, for pulls given no real images."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        out.append(cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC))
    return out


def letterbox(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Scale (H, W, 3) to fit ``size_hw`` keeping aspect, place top-left, pad with 0."""
    h, w = image.shape[:2]
    out_h, out_w = size_hw
    scale = min(out_h / h, out_w / w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    out = np.zeros((out_h, out_w, 3), np.uint8)
    out[:new_h, :new_w] = resized
    return out


def to_tensor(images: Sequence[np.ndarray], spec: InputSpec, size_hw: tuple[int, int]) -> np.ndarray:
    """Letterboxed batch (N, H, W, 3) or (N, 3, H, W) in ``spec``'s dtype, order and scaling.

    ``images`` are (H, W, 3) uint8 RGB in 0..255; ``spec.value_range`` rescales them first.
    """
    batch: np.ndarray = np.stack([letterbox(img, size_hw) for img in images]).astype(np.float32)
    low, high = spec.value_range
    if (low, high) != (0.0, 255.0):
        batch = batch * np.float32((high - low) / 255.0) + np.float32(low)
    if spec.channels == "BGR":
        batch = batch[..., ::-1]
    batch = (batch - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if spec.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch.astype(spec.dtype))


def session(model_bytes: bytes, *, threads: int = 2) -> ort.InferenceSession:
    """A CPU onnxruntime session over serialized ONNX bytes."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| in float64 (0.0 for empty arrays); shapes must match."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0


def _input_name(sess: ort.InferenceSession) -> str:
    return str(sess.get_inputs()[0].name)


def movenet_multipose_vs_reference(
    reference: ort.InferenceSession,
    served: ort.InferenceSession,
    images: Sequence[np.ndarray],
    sizes_hw: Sequence[tuple[int, int]],
    spec: InputSpec,
) -> dict[str, float]:
    """Codec on the served heads vs the full graph's ``output_0``, one image at a time.

    ``output_0`` (1, 6, 56) = 17 x (y, x, score) normalised to the input + (ymin, xmin, ymax,
    xmax) normalised + person score; rows are compared with ``decode_candidates`` in slot order.
    Returns the max abs diff per quantity: keypoint x/y (input pixels, keypoints whose reference
    score >= 1e-3; ``kpt_xy_px_all`` without that floor), keypoint score, box (pixels), person score.
    """
    worst = {
        "kpt_xy_px": 0.0,
        "kpt_xy_px_all": 0.0,
        "kpt_score": 0.0,
        "box_xyxy_px": 0.0,
        "person_score": 0.0,
    }
    n_compared = 0
    for size_hw in sizes_hw:
        h, w = size_hw
        for image in images:
            x = to_tensor([image], spec, size_hw)
            ref = reference.run(None, {_input_name(reference): x})[0][0]
            heads = served.run(None, {_input_name(served): x})
            got = movenet.decode_candidates([head[0] for head in heads])
            ref_kpts = ref[:, :51].reshape(-1, 17, 3)
            ref_xy = np.stack([ref_kpts[..., 1] * w, ref_kpts[..., 0] * h], axis=-1)
            xy_diff = np.abs(got.keypoints[..., :2].astype(np.float64) - ref_xy).max(axis=-1)
            valid = ref_kpts[..., 2] >= KPT_SCORE_FLOOR
            ref_box = ref[:, [52, 51, 54, 53]] * np.asarray([w, h, w, h], np.float32)
            figures = {
                "kpt_xy_px": float(xy_diff[valid].max()) if valid.any() else 0.0,
                "kpt_xy_px_all": float(xy_diff.max()),
                "kpt_score": max_abs_diff(got.keypoints[..., 2], ref_kpts[..., 2]),
                "box_xyxy_px": max_abs_diff(got.boxes_xyxy, ref_box),
                "person_score": max_abs_diff(got.scores, ref[:, 55]),
            }
            n_compared += int(valid.sum())
            for key, value in figures.items():
                worst[key] = max(worst[key], value)
    logger.info("movenet multipose codec vs graph: %s (%d keypoints)", worst, n_compared)
    return {**worst, "n_keypoints_compared": float(n_compared)}


def movenet_singlepose_vs_reference(
    reference: ort.InferenceSession,
    served: ort.InferenceSession,
    images: Sequence[np.ndarray],
    sizes_hw: Sequence[tuple[int, int]],
    spec: InputSpec,
) -> dict[str, float]:
    """``decode_singlepose`` on the served heads vs the full graph's (1, 1, 17, 3) (y, x, score).

    Returns max abs diff of keypoint x/y (input pixels) and keypoint score.
    """
    worst = {"kpt_xy_px": 0.0, "kpt_score": 0.0}
    for h, w in sizes_hw:
        for image in images:
            x = to_tensor([image], spec, (h, w))
            ref = reference.run(None, {_input_name(reference): x})[0].reshape(17, 3)
            heads = served.run(None, {_input_name(served): x})
            got = movenet.decode_singlepose([head[0] for head in heads], stride=h // heads[0].shape[1])
            ref_xy = np.stack([ref[:, 1] * w, ref[:, 0] * h], axis=-1)
            worst["kpt_xy_px"] = max(worst["kpt_xy_px"], max_abs_diff(got[:, :2], ref_xy))
            worst["kpt_score"] = max(worst["kpt_score"], max_abs_diff(got[:, 2], ref[:, 2]))
    return worst


def raw_outputs_vs_reference(
    reference: ort.InferenceSession,
    served: ort.InferenceSession,
    images: Sequence[np.ndarray],
    sizes_hw: Sequence[tuple[int, int]],
    spec: InputSpec,
    reference_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Max abs diff per served output at batch 1 vs the reference output it was cut/renamed from.

    ``reference_names[i]`` is the reference's name of served output i (default: the same names).
    """
    names = [o.name for o in served.get_outputs()]
    ref_names = list(reference_names or names)
    worst = dict.fromkeys(names, 0.0)
    for size_hw in sizes_hw:
        for image in images:
            x = to_tensor([image], spec, size_hw)
            refs = reference.run(ref_names, {_input_name(reference): x})
            gots = served.run(names, {_input_name(served): x})
            for name, got, ref in zip(names, gots, refs, strict=True):
                worst[name] = max(worst[name], max_abs_diff(got, ref))
    return worst


def batch_vs_singles(
    served: ort.InferenceSession,
    images: Sequence[np.ndarray],
    size_hw: tuple[int, int],
    spec: InputSpec,
    *,
    batch: int = 8,
) -> dict[str, float]:
    """Max abs diff per output between one batch of ``batch`` images and single runs of each.

    Fewer images than ``batch`` are cycled (every other repeat mirrored, so rows differ).
    """
    picked = [images[i % len(images)] for i in range(batch)]
    picked = [img if (i // len(images)) % 2 == 0 else img[:, ::-1] for i, img in enumerate(picked)]
    x = to_tensor(picked, spec, size_hw)
    name = _input_name(served)
    outs = served.run(None, {name: x})
    worst = {o.name: 0.0 for o in served.get_outputs()}
    for i in range(batch):
        singles = served.run(None, {name: x[i : i + 1]})
        for out_name, out_b, out_1 in zip(worst, outs, singles, strict=True):
            if out_b.shape[0] != batch:
                raise ValueError(f"output {out_name} has batch dim {out_b.shape[0]}, expected {batch}")
            worst[out_name] = max(worst[out_name], max_abs_diff(out_b[i : i + 1], out_1))
    return worst
