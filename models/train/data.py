"""Top-down training crops from a COCO person-keypoint file (numpy + OpenCV + pycocotools).

Each sample is one annotated person, cut exactly as serving cuts a detector box: ``crop_box``
widens the box to the network's aspect ratio and pads it by ``padding`` (1.25), ``CropBox.matrix``
maps it onto the input (optionally scaled / rotated, then flipped) and ``cv2.warpAffine`` warps it;
keypoints go through the same affine. Images are normalised RGB ``(3, H, W)``
float32 (ImageNet mean / std). Codec-specific targets are left to the caller, so heatmap, SimCC
and regression trainers share this dataset; a ``torch.utils.data.DataLoader`` can wrap it as is
(``seed_worker`` gives each loader worker its own augmentation stream, derived from the loader's
seeded generator, so a run is repeatable whatever the number of workers).

Augmentation (``CropAugment``, per-paper ranges in ``PAPER_AUGMENT``): scale and rotation about the
crop centre, horizontal flip with left/right joints swapped, and half-body (mmpose's convention,
the papers name none: with ``half_body_prob`` and more than ``half_body_min_joints`` labelled
joints, the box becomes the extent of the upper- or the lower-body joints, grown 1.5 x).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from models.pipelines.base import normalize_imagenet
from models.train.coco import load_coco
from models.transforms import crop_box, flip_keypoints

__all__ = [
    "PAPER_AUGMENT",
    "UPPER_BODY",
    "CocoCropDataset",
    "CropAugment",
    "CropSample",
    "box_affine",
    "half_body_box",
    "seed_worker",
    "stack_samples",
    "warp_points",
]


@dataclass(frozen=True)
class CropAugment:
    """Random crop augmentation ranges (AMFACPose: rotation 30, scale 0.7-1.3, flip)."""

    rotation_deg: float = 30.0
    scale_range: tuple[float, float] = (0.7, 1.3)
    flip_prob: float = 0.5
    half_body_prob: float = 0.0
    half_body_min_joints: int = 8
    rotation_prob: float = 1.0


PAPER_AUGMENT: dict[str, CropAugment] = {
    "amfacpose": CropAugment(30.0, (0.7, 1.3), 0.5, half_body_prob=0.3),
    "lehrnet": CropAugment(45.0, (0.65, 1.35), 0.5, half_body_prob=0.3),
}
"""PAPERS.md ranges (rotation +-deg, scale, flip) per family; half-body at mmpose's 0.3."""

UPPER_BODY: tuple[int, ...] = tuple(range(11))
"""Face, shoulders, elbows, wrists (COCO 0-10); the rest (hips, knees, ankles) is the lower body."""


@dataclass(frozen=True)
class CropSample:
    """One person crop.

    Attributes:
        image: ``(3, H, W)`` float32 normalised RGB.
        keypoints: ``(K, 2)`` float32 x, y in crop pixels.
        visible: ``(K,)`` float32, 1 where labelled and inside the crop, else 0.
        affine: ``(2, 3)`` float32 image -> crop pixel mapping.
        annotation_id: the COCO annotation id.
    """

    image: NDArray[np.float32]
    keypoints: NDArray[np.float32]
    visible: NDArray[np.float32]
    affine: NDArray[np.float32]
    annotation_id: int


def box_affine(
    bbox_xywh: tuple[float, float, float, float] | NDArray[np.floating],
    input_hw: tuple[int, int],
    padding: float = 1.25,
    scale: float = 1.0,
    rotation_deg: float = 0.0,
) -> NDArray[np.float64]:
    """``(2, 3)`` float64 affine mapping image pixels to an ``input_hw`` crop of the padded box.

    The serving crop (``crop_box`` of the box's corners, ``CropBox.matrix``), grown by ``scale``
    and rotated by ``rotation_deg`` (counter-clockwise) about its centre.
    """
    x, y, w, h = (float(v) for v in bbox_xywh)
    region = crop_box(np.array([x, y, x + w, y + h]), (input_hw[1], input_hw[0]), padding=padding * scale)
    return region.matrix(rotation_deg)


def half_body_box(
    keypoints: NDArray[np.floating], rng: np.random.Generator, scale: float = 1.5
) -> NDArray[np.float64] | None:
    """``(x, y, w, h)`` around the labelled upper- or lower-body joints (chosen at random, the other
    half when one has fewer than 2), grown ``scale`` x about its centre; None without 2 joints."""
    kps = np.asarray(keypoints, np.float64).reshape(-1, 3)
    labelled = kps[:, 2] > 0
    upper = np.zeros(len(kps), bool)
    upper[list(UPPER_BODY)] = True
    halves = [upper & labelled, ~upper & labelled]
    first = int(rng.random() < 0.5)
    chosen = halves[first] if halves[first].sum() >= 2 else halves[1 - first]
    if chosen.sum() < 2:
        return None
    pts = kps[chosen, :2]
    (x1, y1), (x2, y2) = pts.min(0), pts.max(0)
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, 1.0) * scale, max(y2 - y1, 1.0) * scale
    return np.array([cx - w / 2, cy - h / 2, w, h])


def seed_worker(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: the worker's dataset draws from its own generator,
    seeded from the worker's torch seed (the loader's generator + worker id)."""
    import torch

    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed"):
        info.dataset.reseed(int(torch.initial_seed() % 2**63))


def warp_points(xy: NDArray[np.floating], affine: NDArray[np.floating]) -> NDArray[np.float32]:
    """Apply a ``(2, 3)`` affine to ``(..., 2)`` points."""
    pts = np.asarray(xy, dtype=np.float64)
    a = np.asarray(affine, dtype=np.float64)
    return (pts @ a[:, :2].T + a[:, 2]).astype(np.float32)


class CocoCropDataset:
    """Person crops from a COCO keypoint file.

    Args:
        ann_file: COCO ``person_keypoints*.json`` (read with pycocotools), or the dataset dict itself.
        image_root: folder that ``images[].file_name`` is relative to.
        input_hw: crop ``(H, W)`` in pixels.
        padding: box enlargement factor.
        min_keypoints: drop persons with fewer labelled keypoints (crowd regions always dropped).
        augment: random scale / rotation / flip ranges, or None for deterministic crops.
        seed: seed of the augmentation generator.
        image_ids: keep only persons of these images (a split), all when None.
    """

    def __init__(
        self,
        ann_file: Path | dict,
        image_root: Path,
        input_hw: tuple[int, int],
        *,
        padding: float = 1.25,
        min_keypoints: int = 1,
        augment: CropAugment | None = None,
        seed: int = 0,
        image_ids: set[int] | None = None,
    ) -> None:
        coco = load_coco(ann_file).dataset
        self.image_root = Path(image_root)
        self.input_hw = input_hw
        self.padding = padding
        self.augment = augment
        self._rng = np.random.default_rng(seed)
        self._files = {img["id"]: img["file_name"] for img in coco["images"]}
        self.annotations = [
            a
            for a in coco["annotations"]
            if not a.get("iscrowd", 0)
            and (image_ids is None or a["image_id"] in image_ids)
            and sum(v > 0 for v in a["keypoints"][2::3]) >= min_keypoints
            and a["bbox"][2] > 1
            and a["bbox"][3] > 1
        ]

    def __len__(self) -> int:
        return len(self.annotations)

    def reseed(self, seed: int) -> None:
        """Restart the augmentation generator (``seed_worker`` calls it in each loader worker)."""
        self._rng = np.random.default_rng(seed)

    def __getitem__(self, index: int) -> CropSample:
        ann = self.annotations[index]
        bgr = cv2.imread(str(self.image_root / self._files[ann["image_id"]]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(self.image_root / self._files[ann["image_id"]])
        kps = np.asarray(ann["keypoints"], dtype=np.float32).reshape(-1, 3)
        scale, rotation, flip = 1.0, 0.0, False
        bbox = np.asarray(ann["bbox"], np.float64)
        if self.augment is not None:
            aug, rng = self.augment, self._rng
            labelled = int((kps[:, 2] > 0).sum())
            if aug.half_body_prob > 0 and rng.random() < aug.half_body_prob and labelled > aug.half_body_min_joints:
                half = half_body_box(kps, rng)
                bbox = half if half is not None else bbox
            scale = float(rng.uniform(*aug.scale_range))
            if rng.random() < aug.rotation_prob:
                rotation = float(rng.uniform(-aug.rotation_deg, aug.rotation_deg))
            flip = bool(rng.random() < aug.flip_prob)
        affine = box_affine(bbox, self.input_hw, self.padding, scale, rotation)
        out_h, out_w = self.input_hw
        crop = cv2.warpAffine(bgr, affine, (out_w, out_h), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
        xy = warp_points(kps[:, :2], affine)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] <= out_w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= out_h - 1)
        visible = ((kps[:, 2] > 0) & inside).astype(np.float32)
        if flip:  # the mirror image, with left and right joints swapped (as the flip test does)
            crop = crop[:, ::-1]
            flipped = flip_keypoints(np.concatenate([xy, visible[:, None]], axis=1), out_w)
            xy, visible = flipped[:, :2], flipped[:, 2]
            flip_affine = np.array([[-1, 0, out_w - 1], [0, 1, 0]], dtype=np.float64)
            affine = flip_affine @ np.vstack([affine, [0, 0, 1]])
        rgb = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_BGR2RGB)
        return CropSample(
            image=normalize_imagenet(np.asarray(rgb, dtype=np.uint8)),
            keypoints=xy.astype(np.float32),
            visible=visible,
            affine=affine.astype(np.float32),
            annotation_id=int(ann["id"]),
        )


def stack_samples(samples: list[CropSample]) -> dict[str, NDArray[np.float32]]:
    """Batch crops: ``images (N, 3, H, W)``, ``keypoints (N, K, 2)``, ``visible (N, K)``, ``affine (N, 2, 3)``."""
    return {
        "images": np.stack([s.image for s in samples]),
        "keypoints": np.stack([s.keypoints for s in samples]),
        "visible": np.stack([s.visible for s in samples]),
        "affine": np.stack([s.affine for s in samples]),
    }
