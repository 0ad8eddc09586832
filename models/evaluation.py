"""COCO keypoint evaluation with pycocotools (the `eval` extra)."""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["KEYPOINT_STAT_NAMES", "coco_keypoint_results", "evaluate_keypoints"]

KEYPOINT_STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "AP_medium",
    "AP_large",
    "AR",
    "AR50",
    "AR75",
    "AR_medium",
    "AR_large",
)


def coco_keypoint_results(image_id: int, keypoints: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    """COCO result entries for one image: keypoints (P, 17, 3) image pixels + score, scores (P,)."""
    return [
        {
            "image_id": image_id,
            "category_id": 1,
            "keypoints": [round(float(v), 3) for v in kps.reshape(-1)],
            "score": float(score),
        }
        for kps, score in zip(keypoints, scores, strict=True)
    ]


def evaluate_keypoints(ground_truth: dict[str, Any], results: Sequence[dict[str, Any]]) -> dict[str, float]:
    """OKS keypoint AP/AR of `results` against a COCO keypoint ground-truth dict (pycocotools)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(ground_truth)
        gt.createIndex()
        if not results:
            return dict.fromkeys(KEYPOINT_STAT_NAMES, 0.0)
        dt = gt.loadRes(list(results))
        evaluator = COCOeval(gt, dt, iouType="keypoints")
        evaluator.params.imgIds = sorted(gt.getImgIds())
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(KEYPOINT_STAT_NAMES, evaluator.stats, strict=True)}
