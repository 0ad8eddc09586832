"""Whole-image, letterboxed training samples for ER-Pose from a COCO keypoint file.

Each sample is the full image resized (aspect kept) into an ``S x S`` canvas, centred, padded
with grey 114 (``models.pipelines.erpose.erpose_input``: the serving pipeline's own preprocessing),
with every person's keypoints and box mapped into canvas pixels. Persons that are crowd regions
or have no labelled keypoint are dropped (they cannot be scored by OKS).

With ``augment`` (``ERPoseAugment``, YOLOv8's conventions where the paper names none) a sample is:

* Mosaic (``mosaic_prob``): the image and three others drawn at random, each resized so its long
  side is S, meet at a random centre of a 2S x 2S grey canvas; a joint covered by a neighbour
  becomes unlabelled. Otherwise the plain letterbox, centred on an S x S canvas;
* a random affine onto S x S: scale (``scale_range``) about the mosaic centre (the canvas centre)
  and a shift of up to ``translate`` x S; joints leaving the canvas become unlabelled, boxes are
  the affine image of their corners, clipped; persons left without a labelled joint are dropped;
* horizontal flip (x -> S - 1 - x, left / right joints swapped);
* HSV colour jitter (``hsv_gain``: hue, saturation, value gains, as YOLO's ``augment_hsv``).

Keypoints follow the pixel-centre convention of ``cv2.resize`` / ``cv2.warpAffine`` throughout, so
a joint stays on its pixel. ``seed_worker`` reseeds the generator in each loader worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from models.persons import COCO_FLIP_PAIRS
from models.pipelines.erpose import PAD_VALUE, erpose_input
from models.train.coco import load_coco
from models.transforms import letterbox

__all__ = ["PAD_VALUE", "ERPoseAugment", "ERPoseDataset", "collate", "hsv_jitter"]


@dataclass(frozen=True)
class ERPoseAugment:
    """Bottom-up augmentation ranges (YOLOv8 defaults; the paper: Mosaic, 640 x 640)."""

    mosaic_prob: float = 1.0
    scale_range: tuple[float, float] = (0.5, 1.5)
    translate: float = 0.1
    flip_prob: float = 0.5
    hsv_gain: tuple[float, float, float] = (0.015, 0.7, 0.4)


def hsv_jitter(rgb: np.ndarray, gains: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """YOLO's ``augment_hsv`` on an (H, W, 3) uint8 RGB image: random hue / saturation / value gains."""
    if not any(gains):
        return rgb
    r = rng.uniform(-1, 1, 3) * np.asarray(gains) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV))
    x = np.arange(0, 256, dtype=r.dtype)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    return np.asarray(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), dtype=np.uint8)


_FLIP_INDEX = np.arange(17)
for _left, _right in COCO_FLIP_PAIRS:
    _FLIP_INDEX[[_left, _right]] = _FLIP_INDEX[[_right, _left]]


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

    def __init__(
        self,
        ann_file: Path | dict[str, Any],
        image_root: Path,
        input_size: int,
        num_keypoints: int = 17,
        *,
        augment: ERPoseAugment | None = None,
        seed: int = 0,
        image_ids: set[int] | None = None,
    ) -> None:
        coco = load_coco(ann_file).dataset
        self.image_root = Path(image_root)
        self.input_size = input_size
        self.num_keypoints = num_keypoints
        self.augment = augment
        self._rng = np.random.default_rng(seed)
        persons: dict[int, list[dict]] = {}
        for ann in coco["annotations"]:
            if ann.get("iscrowd", 0) or not any(v > 0 for v in ann["keypoints"][2::3]):
                continue
            if image_ids is not None and ann["image_id"] not in image_ids:
                continue
            persons.setdefault(ann["image_id"], []).append(ann)
        self.images = [img for img in coco["images"] if img["id"] in persons]
        self.persons = persons

    def __len__(self) -> int:
        return len(self.images)

    def reseed(self, seed: int) -> None:
        """Restart the augmentation generator (``seed_worker`` calls it in each loader worker)."""
        self._rng = np.random.default_rng(seed)

    def _rgb(self, index: int) -> np.ndarray:
        path = self.image_root / self.images[index]["file_name"]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"cannot read image {path}")
        return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)

    def _labels(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image-pixel keypoints ``(N, K, 3)`` and boxes ``(N, 4)`` x1, y1, x2, y2 of one image."""
        anns = self.persons[self.images[index]["id"]]
        kpts = np.array([a["keypoints"] for a in anns], dtype=np.float64).reshape(-1, self.num_keypoints, 3)
        x, y, w, h = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4).T
        return kpts, np.stack((x, y, x + w, y + h), axis=1)

    def _canvas(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
        """Mosaic or letterbox canvas (uint8 RGB), its keypoints, boxes and the centre to keep."""
        size, rng = self.input_size, self._rng
        assert self.augment is not None
        if rng.random() >= self.augment.mosaic_prob:
            canvas, lb = letterbox(self._rgb(index), size, center=True, pad_value=PAD_VALUE)
            kpts, boxes = self._labels(index)
            kpts[..., :2] = np.where(kpts[..., 2:] > 0, lb.to_input(kpts[..., :2]), 0.0)
            boxes = boxes * [lb.scale_x, lb.scale_y, lb.scale_x, lb.scale_y] + [lb.pad_x, lb.pad_y] * 2
            return np.asarray(canvas, np.uint8), kpts, boxes, (size / 2, size / 2)
        others = rng.integers(0, len(self.images), 3)
        xc, yc = (float(v) for v in rng.uniform(size / 2, 3 * size / 2, 2))
        ixc, iyc = round(xc), round(yc)
        canvas = np.full((2 * size, 2 * size, 3), PAD_VALUE, np.uint8)
        all_kpts, all_boxes = [], []
        for quadrant, i in enumerate([index, *(int(o) for o in others)]):
            rgb = self._rgb(i)
            r = size / max(rgb.shape[:2])
            h, w = max(1, round(rgb.shape[0] * r)), max(1, round(rgb.shape[1] * r))
            img = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
            x0 = ixc - w if quadrant in (0, 2) else ixc  # where the image's top-left corner goes
            y0 = iyc - h if quadrant in (0, 1) else iyc
            cx1, cy1 = max(x0, 0), max(y0, 0)
            cx2, cy2 = min(x0 + w, 2 * size), min(y0 + h, 2 * size)
            canvas[cy1:cy2, cx1:cx2] = img[cy1 - y0 : cy2 - y0, cx1 - x0 : cx2 - x0]
            kpts, boxes = self._labels(i)
            sx, sy = w / rgb.shape[1], h / rgb.shape[0]
            kpts[..., 0] = (kpts[..., 0] + 0.5) * sx - 0.5 + x0
            kpts[..., 1] = (kpts[..., 1] + 0.5) * sy - 0.5 + y0
            shown = (kpts[..., 0] >= cx1 - 0.5) & (kpts[..., 0] < cx2 - 0.5)
            shown &= (kpts[..., 1] >= cy1 - 0.5) & (kpts[..., 1] < cy2 - 0.5)
            kpts[..., 2] = np.where(shown, kpts[..., 2], 0.0)
            boxes = boxes * [sx, sy, sx, sy] + [x0, y0, x0, y0]
            all_kpts.append(kpts)
            all_boxes.append(np.clip(boxes, [cx1, cy1, cx1, cy1], [cx2, cy2, cx2, cy2]))
        return canvas, np.concatenate(all_kpts), np.concatenate(all_boxes), (xc, yc)

    def _augmented(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        aug, rng, size = self.augment, self._rng, self.input_size
        assert aug is not None
        canvas, kpts, boxes, (xc, yc) = self._canvas(index)
        scale = float(rng.uniform(*aug.scale_range))
        tx, ty = rng.uniform(-aug.translate, aug.translate, 2) * size
        # canvas point (xc, yc) -> output (S/2 + tx, S/2 + ty), scaled about it
        affine = np.array([[scale, 0.0, size / 2 + tx - scale * xc], [0.0, scale, size / 2 + ty - scale * yc]])
        if rng.random() < aug.flip_prob:
            affine = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0]]) @ np.vstack([affine, [0, 0, 1]])
            kpts = kpts[:, _FLIP_INDEX] if kpts.shape[1] == len(_FLIP_INDEX) else kpts
        # pixel centres: warpAffine maps the centre of pixel p to affine @ p
        image = cv2.warpAffine(canvas, affine, (size, size), flags=cv2.INTER_LINEAR, borderValue=(PAD_VALUE,) * 3)
        xy = kpts[..., :2] @ affine[:, :2].T + affine[:, 2]
        inside = (xy >= -0.5).all(-1) & (xy < size - 0.5).all(-1)
        v = np.where(inside, kpts[..., 2], 0.0)
        kpts = np.concatenate([np.where(v[..., None] > 0, xy, 0.0), v[..., None]], axis=-1)
        # box edges are continuous coordinates: pixel-centre affine + 0.5 shift
        edge = affine.copy()
        edge[:, 2] += 0.5 - affine[:, :2].sum(1) * 0.5
        corners = (
            np.stack([boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [0, 3]], boxes[:, [2, 3]]], axis=1) @ edge[:, :2].T
            + edge[:, 2]
        )
        boxes = np.concatenate([corners.min(1), corners.max(1)], axis=1).clip(0, size)
        keep = (v > 0).any(-1) & (boxes[:, 2] - boxes[:, 0] > 1) & (boxes[:, 3] - boxes[:, 1] > 1)
        return hsv_jitter(image, aug.hsv_gain, rng), kpts[keep], boxes[keep]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        if self.augment is not None:
            canvas, kpts_aug, boxes_aug = self._augmented(index)
            tensor_aug = (canvas.astype(np.float32) / 255.0).transpose(2, 0, 1).copy()
            return (
                torch.from_numpy(tensor_aug),
                torch.from_numpy(kpts_aug.astype(np.float32)),
                torch.from_numpy(boxes_aug.astype(np.float32)),
            )
        info = self.images[index]
        rgb = self._rgb(index)
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
