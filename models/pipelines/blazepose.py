"""BlazePose GHUM heavy landmarks (Google MediaPipe, Apache-2.0) as a crop pose: a 256 x 256 RGB
crop as float32 in [0, 1] -> COCO-17, score = visibility x pose flag.

Input range checked on real crops: with ground-truth boxes of ``pose_samples`` (padding 1.25),
[0, 1] scores keypoint AP 0.209 and [-1, 1] 0.167; on crops where both models are confident,
its keypoints agree with MoveNet Thunder's within 2-6 crop pixels (median). BlazePose expects
an upright person (MediaPipe rotates its ROI); upside-down people come out head-down wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from models.codecs.blazepose import BlazePoseCodec
from models.pipelines.base import CropPose, PipelineOptions

if TYPE_CHECKING:
    from models.card import ModelCard
    from models.registry import ModelEntry

__all__ = ["heavy"]


def _unit_float(crop_rgb: np.ndarray) -> np.ndarray:
    """(256, 256, 3) uint8 RGB -> float32 in [0, 1]."""
    return crop_rgb.astype(np.float32) * np.float32(1.0 / 255.0)


def heavy(entry: ModelEntry, card: ModelCard | None, options: PipelineOptions) -> CropPose:
    h, w = entry.input_hw
    return CropPose(entry.name, (w, h), _unit_float, BlazePoseCodec())
