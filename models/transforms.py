"""Image geometry shared by every backend and by training: letterbox to a square input, affine
person crops, horizontal flips, and their exact inverses.

numpy + OpenCV only (serving path). Coordinates are pixels, x right, y down; pixel centres are at
integer coordinates (the OpenCV convention), so a point maps by
`x_in = (x_img + 0.5) * scale_x - 0.5 + pad_x`, exactly as `cv2.resize` moves pixel centres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from models.persons import COCO_FLIP_PAIRS

__all__ = [
    "CropBox",
    "Letterbox",
    "crop_box",
    "flip_keypoints",
    "letterbox",
    "warp_crops",
]


@dataclass(frozen=True)
class Letterbox:
    """How an image of `image_wh` was placed into a `size` x `size` input."""

    size: int
    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    image_wh: tuple[int, int]

    def to_image(self, points_xy: np.ndarray) -> np.ndarray:
        """Map (..., 2) input-pixel points back to image pixels (clipped to the image)."""
        out = np.empty_like(points_xy, dtype=np.float32)
        out[..., 0] = (points_xy[..., 0] - self.pad_x + 0.5) / self.scale_x - 0.5
        out[..., 1] = (points_xy[..., 1] - self.pad_y + 0.5) / self.scale_y - 0.5
        w, h = self.image_wh
        np.clip(out[..., 0], 0, w - 1, out=out[..., 0])
        np.clip(out[..., 1], 0, h - 1, out=out[..., 1])
        return out

    def boxes_to_image(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Map (B, 4) box edges in input pixels to image pixels, clipped to the image.

        Box edges are continuous coordinates (pixel i spans [i, i + 1]), so they scale about the
        image's corner, unlike pixel-centre points (`to_image`).
        """
        out = np.empty(np.shape(boxes_xyxy), dtype=np.float32)
        out[:, 0::2] = (boxes_xyxy[:, 0::2] - self.pad_x) / self.scale_x
        out[:, 1::2] = (boxes_xyxy[:, 1::2] - self.pad_y) / self.scale_y
        w, h = self.image_wh
        np.clip(out[:, 0::2], 0, w, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, h, out=out[:, 1::2])
        return out

    def of_full_size(self, image_wh: tuple[int, int]) -> Letterbox:
        """The placement of this image's full-size original of `image_wh`, of which it is a resize
        (pixel centres mapping as in ``cv2.resize``): maps input pixels straight to the original's."""
        w, h = self.image_wh
        return replace(
            self, scale_x=self.scale_x * w / image_wh[0], scale_y=self.scale_y * h / image_wh[1], image_wh=image_wh
        )

    def to_input(self, points_xy: np.ndarray) -> np.ndarray:
        """Map (..., 2) image-pixel points into input pixels."""
        out = np.empty_like(points_xy, dtype=np.float32)
        out[..., 0] = (points_xy[..., 0] + 0.5) * self.scale_x - 0.5 + self.pad_x
        out[..., 1] = (points_xy[..., 1] + 0.5) * self.scale_y - 0.5 + self.pad_y
        return out


def letterbox(
    image: np.ndarray, size: int, *, center: bool = False, pad_value: int = 0
) -> tuple[np.ndarray, Letterbox]:
    """Resize (H, W, C) `image` to fit a `size` x `size` canvas, keeping aspect; pad with `pad_value`.

    With `center=False` the image sits in the top-left corner (MoveNet's own convention), else it
    is centred (YOLO convention, with `pad_value=114`). Returns the canvas (same dtype) and mapping.
    """
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    pad_x = (size - new_w) // 2 if center else 0
    pad_y = (size - new_h) // 2 if center else 0
    canvas = np.full((size, size, *image.shape[2:]), pad_value, dtype=image.dtype)
    window = canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w]
    # bilinear, as the models were trained (INTER_AREA scored lower: 0.262 vs 0.278 AP on pose_samples),
    # straight into the canvas (a 640 x 480 photo to 384: 0.26 -> 0.21 ms without the extra copy)
    resized = cv2.resize(image, (new_w, new_h), dst=window, interpolation=cv2.INTER_LINEAR)
    if resized is not window:  # a layout OpenCV cannot write in place
        window[...] = resized
    # exact per-axis scales of the resize (rounding makes them differ slightly from `scale`)
    return canvas, Letterbox(
        size=size,
        scale_x=new_w / w,
        scale_y=new_h / h,
        pad_x=float(pad_x),
        pad_y=float(pad_y),
        image_wh=(w, h),
    )


@dataclass(frozen=True)
class CropBox:
    """An axis-aligned image region that maps onto a crop of `out_wh` pixels (top-down models).

    center_xy and size_wh are image pixels; size_wh has the crop's aspect ratio.
    """

    center_xy: tuple[float, float]
    size_wh: tuple[float, float]
    out_wh: tuple[int, int]

    def matrix(self, rotation_deg: float = 0.0) -> np.ndarray:
        """(2, 3) affine image -> crop, mapping pixel centres like `cv2.resize` does.

        `rotation_deg` (training augmentation) turns the crop counter-clockwise about its centre;
        serving crops are axis-aligned (0).
        """
        (cx, cy), (w, h), (ow, oh) = self.center_xy, self.size_wh, self.out_wh
        sx, sy = ow / w, oh / h
        m = np.array(
            [[sx, 0.0, (w / 2 - cx) * sx - 0.5 + sx / 2], [0.0, sy, (h / 2 - cy) * sy - 0.5 + sy / 2]],
            dtype=np.float64,
        )
        if rotation_deg == 0.0:
            return m
        t = math.radians(rotation_deg)
        rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
        centre = np.array([ow / 2 - 0.5, oh / 2 - 0.5])  # where the region's centre lands
        return np.concatenate([rot @ m[:, :2], (rot @ (m[:, 2] - centre) + centre)[:, None]], axis=1)

    def to_image(self, points_xy: np.ndarray) -> np.ndarray:
        """Map (..., 2) crop-pixel points back to image pixels (exact inverse of `to_crop`)."""
        m = self.matrix()
        out = np.empty(points_xy.shape, dtype=np.float32)
        out[..., 0] = (points_xy[..., 0] - m[0, 2]) / m[0, 0]
        out[..., 1] = (points_xy[..., 1] - m[1, 2]) / m[1, 1]
        return out

    def to_crop(self, points_xy: np.ndarray) -> np.ndarray:
        m = self.matrix()
        out = np.empty(points_xy.shape, dtype=np.float32)
        out[..., 0] = points_xy[..., 0] * m[0, 0] + m[0, 2]
        out[..., 1] = points_xy[..., 1] * m[1, 1] + m[1, 2]
        return out


def crop_box(box_xyxy: np.ndarray, out_wh: tuple[int, int], *, padding: float = 1.25) -> CropBox:
    """The region around a person box, grown to the crop's aspect ratio and then by `padding`."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy[:4])
    w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    aspect = out_wh[0] / out_wh[1]
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    return CropBox(center_xy=((x1 + x2) / 2, (y1 + y2) / 2), size_wh=(w * padding, h * padding), out_wh=out_wh)


def warp_crops(image: np.ndarray, boxes: list[CropBox]) -> np.ndarray:
    """Cut every `CropBox` out of (H, W, C) `image`: (B, out_h, out_w, C), zeros outside the image."""
    if not boxes:
        return np.zeros((0, 0, 0, image.shape[2]), dtype=image.dtype)
    ow, oh = boxes[0].out_wh
    crops = np.empty((len(boxes), oh, ow, image.shape[2]), dtype=image.dtype)
    for i, box in enumerate(boxes):
        if box.out_wh != (ow, oh):
            raise ValueError("every crop in one call must share out_wh")
        crops[i] = cv2.warpAffine(
            image, box.matrix(), (ow, oh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        ).reshape(oh, ow, -1)
    return crops


def flip_keypoints(keypoints: np.ndarray, width: int) -> np.ndarray:
    """Mirror (..., 17, C) keypoints of a `width`-pixel-wide horizontally flipped input back.

    x becomes `width - 1 - x` and left/right joints swap; extra channels (scores) follow their joint.
    """
    out = keypoints.copy()
    out[..., 0] = width - 1 - keypoints[..., 0]
    for left, right in COCO_FLIP_PAIRS:
        out[..., [left, right], :] = out[..., [right, left], :]
    return out
