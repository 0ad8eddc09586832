"""Top-down training crops from a COCO person-keypoint file (numpy + OpenCV, no torch).

Each sample is one annotated person, cut exactly as serving cuts a detector box: ``crop_box``
widens the box to the network's aspect ratio and pads it by ``padding`` (1.25), ``CropBox.matrix``
maps it onto the input (optionally scaled / rotated, then flipped) and ``cv2.warpAffine`` warps it;
keypoints go through the same affine. Images are normalised RGB ``(3, H, W)``
float32 (ImageNet mean / std). Codec-specific targets are left to the caller, so heatmap, SimCC
and regression trainers share this dataset; a ``torch.utils.data.DataLoader`` can wrap it as is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from models.pipelines.base import normalize_imagenet
from models.transforms import crop_box, flip_keypoints

__all__ = [
    "CocoCropDataset",
    "CropAugment",
    "CropSample",
    "box_affine",
    "stack_samples",
    "warp_points",
]


@dataclass(frozen=True)
class CropAugment:
    """Random crop augmentation ranges (AMFACPose: rotation 30, scale 0.7-1.3, flip)."""

    rotation_deg: float = 30.0
    scale_range: tuple[float, float] = (0.7, 1.3)
    flip_prob: float = 0.5


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


def warp_points(xy: NDArray[np.floating], affine: NDArray[np.floating]) -> NDArray[np.float32]:
    """Apply a ``(2, 3)`` affine to ``(..., 2)`` points."""
    pts = np.asarray(xy, dtype=np.float64)
    a = np.asarray(affine, dtype=np.float64)
    return (pts @ a[:, :2].T + a[:, 2]).astype(np.float32)


class CocoCropDataset:
    """Person crops from a COCO keypoint file.

    Args:
        ann_file: COCO ``person_keypoints*.json``.
        image_root: folder that ``images[].file_name`` is relative to.
        input_hw: crop ``(H, W)`` in pixels.
        padding: box enlargement factor.
        min_keypoints: drop persons with fewer labelled keypoints (crowd regions always dropped).
        augment: random scale / rotation / flip ranges, or None for deterministic crops.
        seed: seed of the augmentation generator.
    """

    def __init__(
        self,
        ann_file: Path,
        image_root: Path,
        input_hw: tuple[int, int],
        *,
        padding: float = 1.25,
        min_keypoints: int = 1,
        augment: CropAugment | None = None,
        seed: int = 0,
    ) -> None:
        coco = json.loads(Path(ann_file).read_text(encoding="utf-8"))
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
            and a.get("num_keypoints", 0) >= min_keypoints
            and a["bbox"][2] > 1
            and a["bbox"][3] > 1
        ]

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int) -> CropSample:
        ann = self.annotations[index]
        bgr = cv2.imread(str(self.image_root / self._files[ann["image_id"]]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(self.image_root / self._files[ann["image_id"]])
        kps = np.asarray(ann["keypoints"], dtype=np.float32).reshape(-1, 3)
        scale, rotation, flip = 1.0, 0.0, False
        if self.augment is not None:
            aug = self.augment
            scale = float(self._rng.uniform(*aug.scale_range))
            rotation = float(self._rng.uniform(-aug.rotation_deg, aug.rotation_deg))
            flip = bool(self._rng.random() < aug.flip_prob)
        affine = box_affine(ann["bbox"], self.input_hw, self.padding, scale, rotation)
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
