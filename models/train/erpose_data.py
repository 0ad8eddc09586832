"""Whole-image, letterboxed training samples for ER-Pose from a COCO keypoint file.

Each sample is the full image resized (aspect kept) into an ``S x S`` canvas, centred, padded
with grey 114 (``models.pipelines.erpose.erpose_input``: the serving pipeline's own preprocessing),
with every person's keypoints and box mapped into canvas pixels. Persons that are crowd regions
or have no labelled keypoint are dropped (they cannot be scored by OKS). No Mosaic or other
augmentation here (the paper trains with Mosaic, colour jitter and random affine;
``ERPoseDataset`` is the plain base they would wrap).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from models.pipelines.erpose import PAD_VALUE, erpose_input

__all__ = ["PAD_VALUE", "ERPoseDataset", "collate"]


class ERPoseDataset(Dataset[tuple[Tensor, Tensor, Tensor]]):
    """COCO person-keypoint images as whole letterboxed samples.

    Args:
        ann_file: COCO keypoint json (``images``, ``annotations`` with ``keypoints`` and ``bbox``).
        image_root: folder that each image's ``file_name`` is relative to.
        input_size: canvas side S, pixels (a multiple of 32).
        num_keypoints: K (17 for COCO).

    Items: ``image (3, S, S)`` float32 RGB in [0, 1]; ``keypoints (N, K, 3)`` x, y in canvas
    pixels and visibility v in {0, 1, 2}; ``boxes_xyxy (N, 4)`` canvas pixels.
    """

    def __init__(self, ann_file: Path, image_root: Path, input_size: int, num_keypoints: int = 17) -> None:
        coco = json.loads(Path(ann_file).read_text(encoding="utf-8"))
        self.image_root = Path(image_root)
        self.input_size = input_size
        self.num_keypoints = num_keypoints
        persons: dict[int, list[dict]] = {}
        for ann in coco["annotations"]:
            if ann.get("iscrowd", 0) or not any(v > 0 for v in ann["keypoints"][2::3]):
                continue
            persons.setdefault(ann["image_id"], []).append(ann)
        self.images = [img for img in coco["images"] if img["id"] in persons]
        self.persons = persons

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        info = self.images[index]
        path = self.image_root / info["file_name"]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"cannot read image {path}")
        rgb = np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)
        tensor, lb = erpose_input(rgb, self.input_size)
        anns = self.persons[info["id"]]
        kpts = np.array([a["keypoints"] for a in anns], dtype=np.float32).reshape(-1, self.num_keypoints, 3)
        kpts[..., :2] = np.where(kpts[..., 2:] > 0, lb.to_input(kpts[..., :2]), 0.0)
        x, y, w, h = np.array([a["bbox"] for a in anns], dtype=np.float32).T
        boxes = lb.to_input(np.stack((x, y, x + w, y + h), axis=1).reshape(-1, 2, 2)).reshape(-1, 4)
        image = torch.from_numpy(tensor)
        return image, torch.from_numpy(kpts), torch.from_numpy(boxes)


def collate(batch: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Stack images ``(B, 3, S, S)``; keep per-image keypoints and boxes as lists."""
    images, kpts, boxes = zip(*batch, strict=True)
    return torch.stack(images), list(kpts), list(boxes)
