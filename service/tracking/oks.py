"""Similarities between tracks and detections: OKS on keypoints, IoU on boxes.

OKS as COCO defines it (Ronchi & Perona; pycocotools ``COCOeval.computeOks``):
``exp(-d^2 / (2 s^2 k^2))`` averaged over the keypoints both poses see, with ``s^2`` the
reference's area (here its box area, image pixels^2) and ``k = 2 sigma`` per joint.
"""

from __future__ import annotations

import numpy as np

from models.evaluation import COCO_SIGMAS  # the COCO-17 per-joint sigmas (pycocotools')

__all__ = ["COCO_SIGMAS", "iou_matrix", "oks_matrix"]


def oks_matrix(
    reference: np.ndarray,
    reference_boxes_xyxy: np.ndarray,
    candidates: np.ndarray,
    *,
    min_keypoint_score: float,
    min_common_keypoints: int = 3,
) -> np.ndarray:
    """(R, D) OKS of each candidate pose against each reference pose; NaN where it is undefined.

    reference: (R, 17, 3) and candidates: (D, 17, 3) x, y (image pixels), score.
    reference_boxes_xyxy: (R, 4), whose areas scale the tolerance.
    A pair with fewer than `min_common_keypoints` keypoints scored `>= min_keypoint_score` in both
    poses has no OKS (NaN): the caller falls back to the boxes.
    """
    n_ref, n_cand = len(reference), len(candidates)
    if n_ref == 0 or n_cand == 0:
        return np.zeros((n_ref, n_cand))
    sigmas = COCO_SIGMAS[: reference.shape[1]]
    wh = np.clip(reference_boxes_xyxy[:, 2:4] - reference_boxes_xyxy[:, 0:2], 1.0, None)
    area = wh[:, 0] * wh[:, 1]  # (R,)
    d2 = np.sum((reference[:, None, :, :2] - candidates[None, :, :, :2]) ** 2, axis=-1)  # (R, D, K)
    e = d2 / (2.0 * area[:, None, None] * (2.0 * sigmas) ** 2)
    seen = (reference[:, None, :, 2] >= min_keypoint_score) & (candidates[None, :, :, 2] >= min_keypoint_score)
    n_seen = seen.sum(axis=-1)
    total = np.where(seen, np.exp(-e), 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_seen >= max(min_common_keypoints, 1), total / n_seen, np.nan)


def iou_matrix(boxes_a_xyxy: np.ndarray, boxes_b_xyxy: np.ndarray) -> np.ndarray:
    """(A, B) intersection over union of (A, 4) and (B, 4) x1, y1, x2, y2 boxes."""
    a = boxes_a_xyxy[:, None, :]
    b = boxes_b_xyxy[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0.0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0.0, None)
    inter = iw * ih
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
