"""`poseserve data pseudolabel`: COCO keypoint labels from a pretrained (teacher) backend.

The teacher runs as it is served (``service.evaluate.run_served``: the API in-process). A person
is kept when its score is at least ``min_score`` and at least ``min_keypoints`` of its joints
score ``min_keypoint_score``; those joints get v = 2, the others v = 0 (x = y = 0). ``bbox`` is
the served box, ``area`` 0.53 x its area (as LSPET's, for OKS without masks). Video frames (every
``every``-th) are written as JPEG files beside the output. ``info`` names the teacher, its weights
(sha256 of the card) and the thresholds; ``models.train.merge`` combines such a file with labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.weights import WeightsStore
from service.config import Settings
from service.evaluate import ServedImage, run_served
from service.imaging import upright_size

__all__ = ["IMAGE_SUFFIXES", "Thresholds", "extract_frames", "pseudolabel"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Thresholds:
    min_score: float = 0.4
    min_keypoint_score: float = 0.3
    min_keypoints: int = 8


def extract_frames(video: Path, folder: Path, every: int) -> list[Path]:
    """Every ``every``-th frame of ``video`` as ``folder/STEM_NNNNNN.jpg``."""
    folder.mkdir(parents=True, exist_ok=True)
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise ValueError(f"cannot open video {video}")
    frames: list[Path] = []
    index = 0
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            if index % every == 0:
                path = folder / f"{video.stem}_{index:06d}.jpg"
                cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
                frames.append(path)
            index += 1
    finally:
        capture.release()
    return frames


def _annotation(person: dict[str, Any], image_id: int, ann_id: int, t: Thresholds) -> dict[str, Any] | None:
    kps = np.asarray(person["keypoints"], np.float64).reshape(17, 3)
    confident = kps[:, 2] >= t.min_keypoint_score
    if person["score"] < t.min_score or int(confident.sum()) < t.min_keypoints:
        return None
    out = np.zeros((17, 3))
    out[confident, :2] = kps[confident, :2]
    out[confident, 2] = 2
    x1, y1, x2, y2 = (float(v) for v in person["bbox"])
    w, h = max(x2 - x1, 0.0), max(y2 - y1, 0.0)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "iscrowd": 0,
        "keypoints": [round(float(v), 2) for v in out.reshape(-1)],
        "num_keypoints": int(confident.sum()),
        "bbox": [round(v, 2) for v in (x1, y1, w, h)],
        "area": round(0.53 * w * h, 2),
        "score": round(float(person["score"]), 4),
    }


def pseudolabel(
    settings: Settings, teacher: str, images: list[Path], root: Path, source: str, thresholds: Thresholds
) -> dict[str, Any]:
    """A COCO keypoint dict of ``images`` (file names relative to ``root``) labelled by ``teacher``."""
    items = [ServedImage(i + 1, path) for i, path in enumerate(images)]
    served = run_served(settings, teacher, items)
    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for item in items:
        w, h = upright_size(item.path)  # the frame the served keypoints are in
        coco_images.append(
            {"id": item.image_id, "file_name": item.path.relative_to(root).as_posix(), "width": w, "height": h}
        )
        for person in served.get(item.image_id, []):
            ann = _annotation(person, item.image_id, len(annotations) + 1, thresholds)
            if ann is not None:
                annotations.append(ann)
    from models import registry

    entry = registry.backend(teacher)
    store = WeightsStore(settings.model_dir)
    card = store.require(entry.name).card
    return {
        "info": {
            "description": f"pseudo-labels of {source} by the served backend {teacher}",
            "teacher": teacher,
            "teacher_weights": {"name": entry.name, "sha256": card.sha256, "licence": card.licence},
            "thresholds": thresholds.__dict__,
            "source": source,
            "date_created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "licenses": [{"id": 1, "name": f"labels by {teacher} ({card.licence.get('weights', '')}); images: {source}"}],
        "images": coco_images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
    }
