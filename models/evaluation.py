"""COCO keypoint evaluation with pycocotools (the `eval` extra).

``joints`` restricts the evaluation to a subset of the 17 COCO joints: both the ground truth and
the results keep only those joints, and OKS uses only their sigmas (``BODY_JOINTS``: the 12
shoulder-to-ankle joints LSPET labels). Note that COCO OKS already averages over the joints a
ground-truth person has labelled (v > 0), so on a dataset whose face points are unlabelled the
plain AP is the labelled-joint AP; the restriction matters on a fully labelled set such as
pose_samples, where it scores a model on the joints it was taught.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BODY_JOINTS",
    "COCO_SIGMAS",
    "KEYPOINT_STAT_NAMES",
    "coco_keypoint_results",
    "evaluate_keypoints",
    "load_coco",
]

COCO_SIGMAS = (
    np.array([0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89])
    / 10.0
)
"""pycocotools' per-joint OKS sigmas, COCO-17 order."""
BODY_JOINTS: tuple[int, ...] = tuple(range(5, 17))
"""Shoulders, elbows, wrists, hips, knees, ankles (COCO indices 5-16): the joints LSPET labels."""

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


def _keep_joints(keypoints: Sequence[float], joints: Sequence[int]) -> list[float]:
    triples = np.asarray(keypoints, dtype=np.float64).reshape(-1, 3)[list(joints)]
    return [float(v) for v in triples.reshape(-1)]


def load_coco(ann: Path | str | dict[str, Any]) -> Any:
    """A ``pycocotools.coco.COCO`` index of a keypoint file (or of a dataset dict, copied), quietly."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(ann, dict):
            coco = COCO()
            coco.dataset = copy.deepcopy(ann)
            coco.createIndex()
            return coco
        return COCO(str(ann))


def _restrict(
    ground_truth: dict[str, Any], results: Sequence[dict[str, Any]], joints: Sequence[int]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    gt = copy.deepcopy(ground_truth)
    for ann in gt.get("annotations", []):
        ann["keypoints"] = _keep_joints(ann["keypoints"], joints)
        ann["num_keypoints"] = int(sum(v > 0 for v in ann["keypoints"][2::3]))
    restricted = [{**r, "keypoints": _keep_joints(r["keypoints"], joints)} for r in results]
    return gt, restricted


def evaluate_keypoints(
    ground_truth: dict[str, Any], results: Sequence[dict[str, Any]], *, joints: Sequence[int] | None = None
) -> dict[str, float]:
    """OKS keypoint AP/AR of `results` against a COCO keypoint ground-truth dict (pycocotools).

    `joints`: COCO indices to score (all 17 when None); the others are removed from both sides.
    """
    from pycocotools.cocoeval import COCOeval

    if joints is not None:
        ground_truth, results = _restrict(ground_truth, results, joints)

    gt = load_coco(ground_truth)
    with contextlib.redirect_stdout(io.StringIO()):
        if not results:
            return dict.fromkeys(KEYPOINT_STAT_NAMES, 0.0)
        dt = gt.loadRes(list(results))
        evaluator = COCOeval(gt, dt, iouType="keypoints")
        evaluator.params.imgIds = sorted(gt.getImgIds())
        if joints is not None:
            evaluator.params.kpt_oks_sigmas = COCO_SIGMAS[list(joints)]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(KEYPOINT_STAT_NAMES, evaluator.stats, strict=True)}
