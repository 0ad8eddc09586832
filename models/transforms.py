"""Image geometry shared by every backend: letterbox to a square input and its exact inverse.

numpy + OpenCV only (serving path). Coordinates are pixels, x right, y down; pixel centres are at
integer coordinates (the OpenCV convention), so a point maps by
`x_in = (x_img + 0.5) * scale_x - 0.5 + pad_x`, exactly as `cv2.resize` moves pixel centres.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Letterbox", "letterbox"]


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

    def to_input(self, points_xy: np.ndarray) -> np.ndarray:
        """Map (..., 2) image-pixel points into input pixels."""
        out = np.empty_like(points_xy, dtype=np.float32)
        out[..., 0] = (points_xy[..., 0] + 0.5) * self.scale_x - 0.5 + self.pad_x
        out[..., 1] = (points_xy[..., 1] + 0.5) * self.scale_y - 0.5 + self.pad_y
        return out


def letterbox(image: np.ndarray, size: int, *, center: bool = False) -> tuple[np.ndarray, Letterbox]:
    """Resize (H, W, C) `image` to fit a `size` x `size` canvas, keeping aspect; pad with zeros.

    With `center=False` the image sits in the top-left corner (MoveNet's own convention), else it
    is centred. Returns the (size, size, C) canvas (same dtype) and the mapping.
    """
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    pad_x = (size - new_w) // 2 if center else 0
    pad_y = (size - new_h) // 2 if center else 0
    canvas = np.zeros((size, size, *image.shape[2:]), dtype=image.dtype)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    # exact per-axis scales of the resize (rounding makes them differ slightly from `scale`)
    return canvas, Letterbox(
        size=size,
        scale_x=new_w / w,
        scale_y=new_h / h,
        pad_x=float(pad_x),
        pad_y=float(pad_y),
        image_wh=(w, h),
    )
