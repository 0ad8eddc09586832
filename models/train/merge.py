"""Mixed supervision: human labels completed by a teacher's pseudo-labels (``poseserve data pseudolabel``).

The rule (``MergeRule``, a training config field ``merge``):

* images are matched by ``file_name``;
* each labelled person is matched to the teacher person of the same image with the highest OKS
  over the joints both have (COCO sigmas, the label's ``area``), if at least ``min_oks``;
* the labelled joints always stay as labelled; joints of ``fill_joints`` (default: the five face
  points LSPET leaves unlabelled) that the label lacks (v = 0) are taken from the matched teacher
  person where the teacher kept them (v > 0: confident);
* with ``add_unmatched``, teacher persons that match no label join as annotations of their own
  (``"pseudo": true``): for bottom-up training, where an unlabelled person would otherwise be
  learnt as background (LSPET labels one person per image).

The merged file's ``info`` names the teacher (``teacher``) and the rule (``merge``).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from models.evaluation import COCO_SIGMAS

__all__ = ["FACE_JOINTS", "MergeRule", "merge_supervision", "oks"]

FACE_JOINTS: tuple[int, ...] = (0, 1, 2, 3, 4)


class MergeRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fill_joints: tuple[int, ...] = FACE_JOINTS
    min_oks: float = 0.5
    add_unmatched: bool = False


def oks(a: np.ndarray, b: np.ndarray, area: float) -> float:
    """COCO OKS of two ``(17, 3)`` keypoint sets over the joints both label; 0 when none."""
    both = (a[:, 2] > 0) & (b[:, 2] > 0)
    if not both.any():
        return 0.0
    d2 = ((a[:, :2] - b[:, :2]) ** 2).sum(-1)
    e = d2 / (2 * max(area, 1e-9) * (2 * COCO_SIGMAS) ** 2)
    return float(np.exp(-e)[both].mean())


def _area(ann: dict[str, Any]) -> float:
    return float(ann.get("area") or 0.53 * ann["bbox"][2] * ann["bbox"][3])


def merge_supervision(labels: dict[str, Any], teacher: dict[str, Any], rule: MergeRule) -> dict[str, Any]:
    """``labels`` (a COCO dict) with joints and persons from ``teacher`` per ``rule``; inputs unchanged."""
    merged = copy.deepcopy(labels)
    by_file = {img["file_name"]: img["id"] for img in teacher.get("images", [])}
    teacher_people: dict[int, list[dict[str, Any]]] = {}
    for ann in teacher.get("annotations", []):
        teacher_people.setdefault(ann["image_id"], []).append(ann)
    labels_by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in merged["annotations"]:
        labels_by_image.setdefault(ann["image_id"], []).append(ann)
    next_id = max((a["id"] for a in merged["annotations"]), default=0) + 1
    filled = added = 0
    fill = list(rule.fill_joints)
    for img in merged["images"]:
        candidates = teacher_people.get(by_file.get(img["file_name"], -1), [])
        if not candidates:
            continue
        used: set[int] = set()
        for ann in labels_by_image.get(img["id"], []):
            kps = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
            scores = [oks(kps, np.asarray(t["keypoints"], np.float64).reshape(-1, 3), _area(ann)) for t in candidates]
            best = int(np.argmax(scores))
            if scores[best] < rule.min_oks or best in used:
                continue
            used.add(best)
            tk = np.asarray(candidates[best]["keypoints"], np.float64).reshape(-1, 3)
            take = np.zeros(len(kps), bool)
            take[fill] = True
            take &= (kps[:, 2] == 0) & (tk[:, 2] > 0)
            kps[take] = tk[take]
            filled += int(take.sum())
            ann["keypoints"] = [float(v) for v in kps.reshape(-1)]
            ann["num_keypoints"] = int((kps[:, 2] > 0).sum())
        if rule.add_unmatched:
            for i, t in enumerate(candidates):
                if i in used:
                    continue
                merged["annotations"].append({**t, "id": next_id, "image_id": img["id"], "pseudo": True})
                next_id += 1
                added += 1
    info = dict(merged.get("info") or {})
    info["teacher"] = (teacher.get("info") or {}).get("teacher", "unknown")
    info["merge"] = {**rule.model_dump(mode="json"), "joints_filled": filled, "persons_added": added}
    merged["info"] = info
    return merged
