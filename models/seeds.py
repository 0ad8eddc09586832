"""The seed-paper models at serving time: pre/post-processing around their exported ONNX graphs.

numpy + OpenCV only (serving path). Geometry and codec parameters are read from each model's
card (written by `poseserve export`), so what is served always matches what was exported:
- AMFACPose (SimCC, k = 2) and LE-HRNet (heatmaps at 1/4) are top-down `CropPose`s: an RGB
  crop, ImageNet mean/std normalised, NCHW float32 -> 17 keypoints in crop pixels.
- ER-Pose is single-stage: a centred YOLO letterbox (grey 114), RGB / 255, NCHW float32 -> the
  one-to-one head (N, A, 52) -> persons, no NMS.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.codecs import erpose
from models.codecs.heatmap import HeatmapCodec
from models.codecs.simcc import SimCCCodec
from models.pipelines import Persons
from models.transforms import Letterbox, letterbox

__all__ = [
    "ERPOSE_PAD_VALUE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ERPosePipeline",
    "HeatmapCropPose",
    "SimCCCropPose",
    "crop_pose_from_card",
    "normalize_imagenet",
]

IMAGENET_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
IMAGENET_STD = np.array([58.395, 57.12, 57.375], np.float32)
ERPOSE_PAD_VALUE = 114


def normalize_imagenet(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, ImageNet mean / std normalised."""
    return ((rgb.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()


def _keypoints(xy: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(1, K, 2) + (1, K) -> (K, 3)."""
    return np.concatenate([xy[0], scores[0, :, None]], axis=1).astype(np.float32)


class SimCCCropPose:
    """AMFACPose: outputs `x_logits` (K, W*k) and `y_logits` (K, H*k) per crop."""

    output_names = ("x_logits", "y_logits")

    def __init__(self, name: str, crop_wh: tuple[int, int], split_ratio: float = 2.0) -> None:
        self.name, self.crop_wh = name, crop_wh
        self.codec = SimCCCodec(crop_wh, split_ratio=split_ratio)

    def preprocess_crop(self, crop_rgb: np.ndarray) -> np.ndarray:
        return normalize_imagenet(crop_rgb)

    def postprocess_crop(self, outputs: list[np.ndarray]) -> np.ndarray:
        xy, scores = self.codec.decode(outputs[0][None], outputs[1][None])
        return _keypoints(xy, scores)


class HeatmapCropPose:
    """LE-HRNet: output `heatmaps` (K, H/4, W/4) per crop; DARK refinement on decode."""

    output_names = ("heatmaps",)

    def __init__(self, name: str, crop_wh: tuple[int, int], heatmap_wh: tuple[int, int]) -> None:
        self.name, self.crop_wh = name, crop_wh
        self.codec = HeatmapCodec(crop_wh, heatmap_wh)

    def preprocess_crop(self, crop_rgb: np.ndarray) -> np.ndarray:
        return normalize_imagenet(crop_rgb)

    def postprocess_crop(self, outputs: list[np.ndarray]) -> np.ndarray:
        xy, scores = self.codec.decode(outputs[0][None])
        return _keypoints(xy, scores)


def crop_pose_from_card(name: str, card: dict[str, Any]) -> SimCCCropPose | HeatmapCropPose:
    """The crop pose of an exported seed model, configured from its card."""
    h, w = card["input"]["size_hw"]
    params = card.get("codec_params", {})
    if card["codec"] == "simcc":
        return SimCCCropPose(name, (w, h), split_ratio=float(params.get("split_ratio", 2.0)))
    if card["codec"] == "heatmap":
        hh, hw = params.get("heatmap_hw", (h // 4, w // 4))
        return HeatmapCropPose(name, (w, h), (int(hw), int(hh)))
    raise ValueError(f"{name}: no crop pose for codec {card['codec']!r}")


class ERPosePipeline:
    """ER-Pose single-stage: square letterbox input, one-to-one head decoded without NMS."""

    def __init__(self, input_size: int, strides: tuple[int, ...], conf_threshold: float = 0.25) -> None:
        if input_size % max(strides):
            raise ValueError(f"ER-Pose input size must be a multiple of {max(strides)}, got {input_size}")
        self.input_size, self.strides, self.conf_threshold = input_size, strides, conf_threshold

    @classmethod
    def from_card(cls, card: dict[str, Any], input_size: int | None = None) -> ERPosePipeline:
        size = input_size or int(card["input"]["size_hw"][0])
        return cls(size, tuple(int(s) for s in card["codec_params"]["strides"]))

    def preprocess(self, image_rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        canvas, geometry = letterbox(image_rgb, self.input_size, center=True, pad_value=ERPOSE_PAD_VALUE)
        return (canvas.astype(np.float32) / 255.0).transpose(2, 0, 1).copy(), geometry

    def postprocess(self, outputs: list[np.ndarray], geometry: Letterbox) -> Persons:
        keypoints, boxes, scores = erpose.decode(
            outputs[0], input_size=self.input_size, strides=self.strides, conf_threshold=self.conf_threshold
        )
        return Persons.from_input(keypoints, boxes, scores, geometry)
